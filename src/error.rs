//! The crate's top-level error: every module's typed error. [`crate::exit::code`] maps
//! each to its exit code.

use std::path::PathBuf;

use miette::Diagnostic;

use crate::provider::ProviderError;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum Error {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("failed to use the state file")]
    State(#[from] crate::state::StateError),
    #[error("failed to hash inputs")]
    Hash(#[from] crate::hash::HashError),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error("failed to use the local image store")]
    Local(#[from] crate::provider::local::LocalError),
    #[error("failed to read source `{name}`")]
    Origin {
        name: String,
        #[source]
        source: crate::provider::local::LocalError,
    },
    #[error("{what}: {path}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("source `{name}` uses the {provider} provider, which this build of imgraph does not include")]
    #[diagnostic(help("rebuild imgraph with `--features aws` (on by default)"))]
    ProviderUnavailable { name: String, provider: String },
    #[error("failed to take the state lock: {holder} holds it ({})", crate::report::state::lease_holder(*pid, host.as_deref(), *since, *now))]
    #[diagnostic(help(
        "wait for it with `--lock-timeout 10m`; if that process is gone for good, `imgraph lock break` removes the lock (`imgraph lock status` shows it)"
    ))]
    Locked {
        pid: u32,
        host: Option<String>,
        holder: String,
        since: i64,
        now: i64,
    },
    #[error("failed to break the state lock: {holder} holds it ({}) {why}", crate::report::state::lease_holder(*pid, host.as_deref(), *since, *now))]
    #[diagnostic(help("`imgraph lock break --force` breaks it all the same: only do that when you know the holder no longer writes the state"))]
    LockHolderAlive {
        pid: u32,
        host: Option<String>,
        holder: String,
        since: i64,
        now: i64,
        why: String,
    },
    #[error("stopped by a signal while {0}")]
    Interrupted(String),
    #[error("failed to read saved plan {}", path.display())]
    SavedPlan {
        path: PathBuf,
        source: crate::plan::saved::SavedPlanError,
    },
    #[error(
        "failed to apply saved plan {}: the project changed since the plan was made:\n{}",
        path.display(),
        changes.iter().map(|c| format!("  - {c}")).collect::<Vec<_>>().join("\n")
    )]
    #[diagnostic(help(
        "make a new plan with `imgraph plan --out FILE`, review it, and apply that"
    ))]
    StalePlan { path: PathBuf, changes: Vec<String> },
    #[error("failed to explain `{node}`: it is no stage node of this project{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    #[diagnostic(help(
        "name a node as `imgraph plan` lists it (`build:web`, `test:web/http`, `deliver:web@staging`) or an image"
    ))]
    UnknownNode {
        node: String,
        suggestion: Option<String>,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Init(#[from] crate::init::InitError),
    #[error("failed to read the records of {image} for recovery")]
    Recovery {
        image: String,
        #[source]
        source: Box<crate::provider::ProviderError>,
    },
    #[error("failed to find {image}{}: {known}", version.as_deref().map(|v| format!(" {v}")).unwrap_or_default())]
    UnknownVersion {
        image: String,
        version: Option<String>,
        known: String,
    },
    #[error("failed to list the packages of {image} {version}: none were recorded for it")]
    #[diagnostic(help(
        "package lists are read after each build of a local image; a {provider} image, or a version built before imgraph recorded them, has none"
    ))]
    NoPackageList {
        image: String,
        version: String,
        provider: String,
    },
    #[error("failed to {0}")]
    Sbom(#[from] crate::report::sbom::SbomError),
    #[error("failed to use the shared state: {} declares no `state {{ s3 … }}`", config.display())]
    #[diagnostic(help(
        "add `state {{ s3 bucket=\"…\" region=\"…\" }}` to the config first (README: Shared state)"
    ))]
    NotShared { config: PathBuf },
    #[error("failed to push the state: there is no state file at {}", path.display())]
    NothingToPush { path: PathBuf },
    #[cfg(feature = "s3")]
    #[error("failed to use the shared storage")]
    Remote(#[from] crate::remote::RemoteError),
    #[error(transparent)]
    Exec(Box<crate::exec::ExecError>),
    #[error("failed to set up the {provider} provider")]
    ProviderSetup {
        provider: crate::config::model::ProviderType,
        #[source]
        source: Box<ProviderError>,
    },
    #[error("failed to prepare the {provider} provider for the apply")]
    PrepareProvider {
        provider: &'static str,
        #[source]
        source: Box<ProviderError>,
    },
    #[error("failed to resolve source `{name}`")]
    ResolveSource {
        name: String,
        #[source]
        source: Box<ProviderError>,
    },
    #[error("failed to check artifact {artifact}")]
    CheckArtifact {
        artifact: String,
        #[source]
        source: Box<ProviderError>,
    },
    #[error("failed to run the probes inside image {image}")]
    ImageProbes {
        image: String,
        #[source]
        source: Box<ProviderError>,
    },
    #[error("failed to destroy {kind} {resource}")]
    DestroyLeftover {
        kind: String,
        resource: String,
        #[source]
        source: Box<ProviderError>,
    },
    #[error("failed to clean up tagged instances")]
    SweepTagged(#[source] Box<ProviderError>),
    #[error("failed to record the revocation of {image} {version} with its provider")]
    RecordRevocation {
        image: String,
        version: String,
        #[source]
        source: Box<ProviderError>,
    },
    #[error("failed to remove {image} {version}")]
    RemoveVersion {
        image: String,
        version: String,
        #[source]
        source: Box<ProviderError>,
    },
    #[error("failed to revoke {image}@{version}: the project has no image `{image}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    RevokeUnknownImage {
        image: String,
        version: String,
        suggestion: Option<String>,
    },
    #[error("failed to read `{target}`: name a version as IMAGE@VERSION, e.g. base@1.0.1")]
    VersionName { target: String },
    #[error(
        "failed to save the plan: the state kept changing while planning (is an apply running?)"
    )]
    StateKeptChanging,
}

impl From<crate::exec::ExecError> for Error {
    fn from(e: crate::exec::ExecError) -> Self {
        Error::Exec(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
