//! Providers: where images live and instances run. One trait, [`Provider`], whose
//! methods own the whole life of each temporary resource they create: every resource is
//! written to the instance ledger *before* it is created and destroyed before the method
//! returns, on success, failure, timeout and cancellation alike. A killed process leaves
//! ledger entries behind, and [`Provider::destroy_leftover`] removes what they name.

#[cfg(feature = "aws")]
pub mod aws;
mod connect;
#[cfg(test)]
pub(crate) mod fake;
pub mod local;
pub mod probes;
#[cfg(feature = "s3")]
pub mod s3;
pub mod upstream;

pub use connect::{connect, ConnectError, Providers};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::model::{Builder, Image, Project, ProviderType, TestSuite};
use crate::graph::NodeId;
use crate::process::{CommandSpec, Place, ProcessError, ProcessOutcome, ProcessRecorder};
use crate::state::{ImageVersion, LedgerEntry, ReleaseStatus, RunId, State, StateError};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Local(#[from] local::LocalError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    State(#[from] StateError),
    #[cfg(feature = "aws")]
    #[error(transparent)]
    Aws(#[from] aws::AwsError),
    #[error("the state lock was poisoned by a crashed task")]
    Poisoned,
    /// A build handed to a provider that does not run its builder (validation checks an
    /// image's provider against [`crate::config::model::Build::provider`] first).
    #[error(
        "the {provider} provider cannot run `{builder}` builds; use {}",
        Builder::of(*provider).iter().map(|b| format!("build \"{b}\"")).collect::<Vec<_>>().join(" or ")
    )]
    WrongBuilder {
        provider: ProviderType,
        builder: Builder,
    },
    /// An optional capability (see [`Provider`]) this provider does not have.
    #[error("the {provider} provider cannot {capability}")]
    Unsupported {
        provider: &'static str,
        capability: &'static str,
    },
    /// `in="image"` probes on a provider that cannot run commands inside its images.
    #[error("run probe `{probe}` inside image `{image}`: the {provider} provider cannot run probes inside its images (in=\"image\" needs the local provider)")]
    NoImageProbes {
        probe: String,
        image: String,
        provider: &'static str,
    },
    /// A ledger entry of a kind this provider never writes.
    #[error("destroy a leftover `{kind}` {resource}: the {provider} provider does not make such resources")]
    UnknownLeftover {
        provider: &'static str,
        kind: String,
        resource: String,
    },
    /// The work failed, and so did destroying what it made (both are kept: the first is
    /// why the work failed, the second what is left for `imgraph gc`).
    #[error("{}; and the clean-up failed too (left for `imgraph gc`): {}", crate::text::error_chain(error.as_ref()), crate::text::error_chain(cleanup.as_ref()))]
    CleanupFailed {
        error: Box<ProviderError>,
        cleanup: Box<ProviderError>,
    },
    /// Another project's shared state could not be read (an `imgraph` source).
    #[error(transparent)]
    Upstream(Box<dyn std::error::Error + Send + Sync>),
    /// An `imgraph` source whose image has no Ready version in the other project.
    #[error("find image `{image}` in the project at {place}: it has no Ready version (yet)")]
    NoReadyUpstream { image: String, place: String },
    #[error("worker thread failed")]
    Worker(#[from] tokio::task::JoinError),
    #[error("build step `{command}` {}", outcome.describe())]
    StepFailed {
        command: String,
        outcome: ProcessOutcome,
    },
    /// A probe inside an image that did not succeed; `log_tail` is the end of its log.
    #[error("run probe `{probe}` inside {image} {version}: it {}: {log_tail}", outcome.describe())]
    ProbeFailed {
        probe: String,
        image: String,
        version: String,
        outcome: ProcessOutcome,
        log_tail: String,
    },
    #[error("create the probe log folder {}", path.display())]
    ProbeLogDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A version as a provider's own records describe it (AMI tags, the local registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedVersion {
    pub image: String,
    pub version: String,
    pub artifact_id: String,
    pub key: String,
    pub status: ReleaseStatus,
    /// When it was built, when the provider knows.
    pub built_at_ms: Option<i64>,
    /// Environments it was delivered to.
    pub environments: Vec<String>,
    /// The image's own tags as applied to it (the local registry; AMI tags less imgraph's
    /// own), when known.
    pub tags: Option<std::collections::BTreeMap<String, String>>,
}

/// Where a build starts from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A local source: a tarball or directory inside the project.
    LocalPath(PathBuf),
    /// A provider artifact: a local store id or an AMI id.
    Artifact(String),
}

/// Writes the instance ledger for one run: resources are recorded before they exist.
#[derive(Clone)]
pub struct Ledger {
    pub state: Arc<Mutex<State>>,
    pub run: Option<RunId>,
    /// Whether the local folders ledgered here are made inside a run's own work folder,
    /// which the next apply removes whole whatever the ledger says (see
    /// `exec::run_folder`). Their rows then need no sync: after a power loss the folder
    /// is found by its place.
    pub in_run_folder: bool,
}

impl Ledger {
    /// Records a local folder before it is made: synced like any resource, unless it is
    /// made inside a run's work folder ([`Ledger::in_run_folder`]), which the next apply
    /// removes whole. Then the row is only committed, which already survives a killed
    /// imgraph, and a power loss that takes it back leaves the folder where the next
    /// apply looks.
    pub fn add_folder(
        &self,
        node: &str,
        provider: &str,
        kind: &str,
        resource: &str,
        purpose: &str,
    ) -> Result<i64, ProviderError> {
        if self.in_run_folder {
            self.add_unsynced(node, provider, kind, resource, purpose)
        } else {
            self.add(node, provider, kind, resource, purpose)
        }
    }

    pub fn add(
        &self,
        node: &str,
        provider: &str,
        kind: &str,
        resource: &str,
        purpose: &str,
    ) -> Result<i64, ProviderError> {
        let added = {
            let st = self.state.lock().map_err(|_| ProviderError::Poisoned)?;
            st.ledger_add(self.run, node, provider, kind, resource, purpose)?
        };
        // On disk before the resource exists, synced without holding the state.
        Ok(added.sync()?)
    }
    /// [`Ledger::add`] for a resource that cannot outlive this machine's power: a
    /// process. The row is committed, so a killed imgraph leaves it for the next run to
    /// kill the group; it is not synced, because what a sync adds is surviving a power
    /// loss, and no process survives that.
    pub fn add_unsynced(
        &self,
        node: &str,
        provider: &str,
        kind: &str,
        resource: &str,
        purpose: &str,
    ) -> Result<i64, ProviderError> {
        let st = self.state.lock().map_err(|_| ProviderError::Poisoned)?;
        let added = st.ledger_add(self.run, node, provider, kind, resource, purpose)?;
        // Committed; nothing to sync (see above).
        Ok(added.committed())
    }
    pub fn set_resource(&self, id: i64, resource: &str) -> Result<(), ProviderError> {
        let set = {
            let st = self.state.lock().map_err(|_| ProviderError::Poisoned)?;
            st.ledger_set_resource(id, resource)?
        };
        Ok(set.sync()?)
    }
    pub fn destroyed(&self, id: i64) -> Result<(), ProviderError> {
        let st = self.state.lock().map_err(|_| ProviderError::Poisoned)?;
        Ok(st.ledger_mark_destroyed(id)?)
    }
    /// The recorder of `node`'s running process groups, for [`crate::process::run`].
    pub fn processes_of(&self, node: &str) -> Arc<dyn ProcessRecorder> {
        Arc::new(NodeProcesses {
            ledger: self.clone(),
            node: node.to_owned(),
        })
    }
}

/// The ledger entries of one node's running process groups.
#[derive(Clone)]
struct NodeProcesses {
    ledger: Ledger,
    node: String,
}

impl std::fmt::Debug for NodeProcesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeProcesses({})", self.node)
    }
}

impl ProcessRecorder for NodeProcesses {
    fn started(&self, resource: &str) -> Option<i64> {
        let kind = crate::process::LEDGER_KIND;
        let added = self
            .ledger
            .add_unsynced(&self.node, "host", kind, resource, "command");
        added.ok()
    }
    fn ended(&self, id: i64) {
        let _ = self.ledger.destroyed(id);
    }
}

/// What a project input of a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeInputKind {
    File,
    Symlink,
    Dir,
}

/// A project file, symlink or folder a node's commands may read: a leaf of the node's
/// manifest (declared and implicit inputs). A sandbox shows a command these and no other
/// project file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInput {
    /// Project-relative, with `/`.
    pub path: String,
    pub kind: NodeInputKind,
}

/// What every request runs with: the project, where the command's output goes, a
/// folder for temporary files, the ledger its temporary resources are recorded in, and
/// the token that cancels it.
#[derive(Clone, Copy)]
pub struct Job<'a> {
    pub project: &'a Project,
    pub log: &'a Path,
    pub work_dir: &'a Path,
    pub ledger: &'a Ledger,
    pub cancel: &'a CancellationToken,
}

/// Everything a build needs.
pub struct BuildRequest<'a> {
    pub image: &'a Image,
    pub node_id: &'a NodeId,
    pub version: &'a str,
    pub key: &'a str,
    pub origin: Origin,
    /// The build node's inputs (its manifest's files and symlinks).
    pub inputs: &'a [NodeInput],
    pub job: Job<'a>,
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct Built {
    pub artifact_id: String,
}

/// Everything a test needs: the suite and the exact artifact to make an instance from.
pub struct TestRequest<'a> {
    pub image: &'a Image,
    pub suite: &'a TestSuite,
    pub node_id: &'a NodeId,
    pub artifact_id: &'a str,
    pub version: &'a str,
    /// The test node's inputs (its manifest's files and symlinks).
    pub inputs: &'a [NodeInput],
    pub job: Job<'a>,
}

impl TestRequest<'_> {
    /// The suite's command as every provider runs it: in the project folder, with the
    /// suite's variables, then the instance's (`IMGRAPH_INSTANCE_*`, given by the
    /// provider) and the version's under test (`IMGRAPH_IMAGE`, `IMGRAPH_VERSION`,
    /// `IMGRAPH_IMAGE_ID`), its process groups ledgered under the test node.
    pub fn command(&self, place: Place, instance: Vec<(String, String)>) -> CommandSpec {
        let mut env = instance;
        env.extend([
            ("IMGRAPH_IMAGE".into(), self.image.name.clone()),
            ("IMGRAPH_VERSION".into(), self.version.to_string()),
            ("IMGRAPH_IMAGE_ID".into(), self.artifact_id.to_string()),
        ]);
        CommandSpec {
            command: self.suite.command.clone(),
            cwd: self.job.project.root.clone(),
            env: crate::process::command_env(
                place,
                &self.image.test_env(self.suite).names(),
                &[],
                env,
            ),
            timeout: Some(self.suite.timeout),
            recorder: Some(self.job.ledger.processes_of(self.node_id.as_str())),
            ..Default::default()
        }
    }
}

/// A probe with `in="image"`: a command run inside a throwaway instance of one version
/// of an image, whose standard output is hashed.
pub struct ProbeRequest<'a> {
    pub image: &'a Image,
    pub name: &'a str,
    pub command: &'a str,
    /// The host's network (`network="host"`) or loopback only.
    pub host_network: bool,
    pub timeout: Duration,
    /// Names of the caller's variables the command sees (`env`, `pass-env`).
    pub env: Vec<String>,
    pub artifact_id: &'a str,
    pub version: &'a str,
    /// `log` takes the command's standard error.
    pub job: Job<'a>,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Builds an image; temporary resources are ledgered and always cleaned up.
    async fn build(&self, req: BuildRequest<'_>) -> Result<Built, ProviderError>;
    /// Makes a fresh instance from `artifact_id`, runs the suite's command against it and
    /// destroys the instance, whatever happens.
    async fn test(&self, req: TestRequest<'_>) -> Result<ProcessOutcome, ProviderError>;
    /// Records the release status of a version with the provider itself (AMI tags, the
    /// local registry), so a lost state file can be rebuilt from it. The first call for a
    /// version (`Candidate`, right after its build) records the whole version.
    async fn set_status(
        &self,
        version: &ImageVersion,
        status: ReleaseStatus,
    ) -> Result<(), ProviderError>;
    /// Marks a version `Revoked` with `reason` in the provider's own records (AMI tags
    /// `Release_Status` and `imgraph:revoked-reason`, the local registry), or with `None`
    /// restores `version.status` and removes the reason.
    async fn set_revoked(
        &self,
        version: &ImageVersion,
        reason: Option<&str>,
    ) -> Result<(), ProviderError>;
    /// Notes with the provider that `environment` got this version (AMI tags, the local
    /// registry), so a lost state file does not mean delivering again.
    async fn record_delivery(
        &self,
        version: &ImageVersion,
        environment: &str,
    ) -> Result<(), ProviderError>;
    /// Replaces the image's own tags on a version (`previous`: the tags it carried, when
    /// known, so that removed keys are removed too). imgraph's own tags are untouched.
    async fn set_tags(
        &self,
        version: &ImageVersion,
        tags: &std::collections::BTreeMap<String, String>,
        previous: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<(), ProviderError>;
    /// The versions the provider's own records know (of one image, when given), for
    /// `imgraph state recover` and the recovery of a plan without history. Providers
    /// that keep no records of their own return none.
    async fn recorded_versions(
        &self,
        _image: Option<&str>,
    ) -> Result<Vec<RecordedVersion>, ProviderError> {
        Ok(Vec::new())
    }
    /// Removes a version for `imgraph gc` (retention): its artifact (a local store file; an
    /// AMI deregistered and its snapshots deleted), unless `keep_artifact` (another kept
    /// version has the same bytes), and notes the removal in the provider's own records.
    /// Returns the ids of what was removed.
    async fn remove_version(
        &self,
        version: &ImageVersion,
        keep_artifact: bool,
    ) -> Result<Vec<String>, ProviderError>;
    /// What is inside a built image (its package databases), when this provider can look
    /// inside its images; `None` when it cannot (AMIs are not read).
    async fn inventory(
        &self,
        _artifact_id: &str,
    ) -> Result<Option<crate::packages::Inventory>, ProviderError> {
        Ok(None)
    }
    /// Runs an `in="image"` probe in a fresh instance of `req.artifact_id` (destroyed
    /// afterwards, whatever happens) and returns the digest of its standard output.
    async fn probe(&self, req: ProbeRequest<'_>) -> Result<String, ProviderError> {
        Err(ProviderError::NoImageProbes {
            probe: req.name.into(),
            image: req.image.name.clone(),
            provider: self.name(),
        })
    }
    /// The id of the newest image matching a source's owners, name pattern and tags (an
    /// `aws` source), for providers with an image catalogue.
    async fn resolve_source(
        &self,
        _owners: &[String],
        _pattern: Option<&str>,
        _tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, ProviderError> {
        Err(ProviderError::Unsupported {
            provider: self.name(),
            capability: "resolve sources",
        })
    }
    /// Destroys instances tagged for this project that no ledger knows (a lost state
    /// file) and returns their ids. Providers that create nothing outside the ledger's
    /// reach have none.
    async fn sweep_tagged_leftovers(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }
    /// Whether an artifact still exists (a cache hit is never taken for a missing one).
    async fn artifact_exists(&self, artifact_id: &str) -> Result<bool, ProviderError>;
    /// What must hold before an apply records anything (a shared artifact store honours
    /// conditional writes); nothing for providers without such a store.
    async fn check_before_apply(&self) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Makes an artifact readable on this machine before a command that may read it runs
    /// (a delivery): the local provider fetches one its store lacks from its shared store,
    /// noting it in `log`. Nothing for providers whose artifacts live elsewhere (AMIs).
    async fn fetch_artifact(&self, _artifact_id: &str, _log: &Path) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Destroys a resource a killed run left behind.
    async fn destroy_leftover(&self, entry: &LedgerEntry) -> Result<(), ProviderError>;
}

/// Appends one line of imgraph's own narration to a node log (best effort).
pub fn append_log(log: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
}
