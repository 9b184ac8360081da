//! The executor's errors: its own (a node it cannot run as planned, a test or delivery
//! that failed, a version in the wrong state) beside the provider's, the process runner's
//! and the state's, which it keeps as they are.
//!
//! A node's error ends that node (recorded with [`crate::text::error_chain`] of it); an
//! error from recording or scheduling ends the run.

use std::path::PathBuf;

use crate::graph::NodeId;
use crate::process::{ProcessError, ProcessOutcome};
use crate::provider::ProviderError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("the state lock was poisoned by a crashed task")]
    Poisoned,
    #[error("failed to record {node} as cut off early")]
    CutOff {
        node: NodeId,
        #[source]
        source: Box<ExecError>,
    },
    #[error("failed to find {node} among the nodes this run was planned with")]
    NotPlanned { node: NodeId },
    #[error("failed to create {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A name the plan holds that the project does not (validation makes these
    /// unreachable, short of a saved plan for another project).
    #[error("unknown {what} `{name}`")]
    Unknown { what: &'static str, name: String },
    #[error("provider `{provider}` is not available")]
    NoProvider { provider: String },
    #[error("source `{name}` was not resolved")]
    Unresolved { name: String },
    #[error("{environment} does not deliver {image}")]
    NotDelivered { environment: String, image: String },
    #[error("`{image}` has never been built")]
    NeverBuilt { image: String },
    #[error("{image} {version} is not in the image registry")]
    NotRegistered { image: String, version: String },
    /// A build's upstream version is not `Ready` (`revoked`: it was revoked).
    #[error(
        "`{image}` is built from `{upstream}` {version}, which {}",
        if *revoked { "is revoked: a revoked version is never an origin" } else { "is not Ready (its tests have not all passed)" }
    )]
    OriginNotReady {
        image: String,
        upstream: String,
        version: String,
        revoked: bool,
    },
    #[error("the build made the artifact of revoked {image} {version} again ({reason}): change its inputs, or `imgraph revoke --undo {image}@{version}`")]
    RevokedArtifact {
        image: String,
        version: String,
        reason: String,
    },
    #[error("{image} {back_to} has no build record to go back to")]
    NothingToGoBackTo { image: String, back_to: String },
    #[error("{image} {back_to} is no longer Ready: nothing to go back to from revoked {revoked}")]
    GoBackNotReady {
        image: String,
        back_to: String,
        revoked: String,
    },
    #[error("test `{suite}` {} on {image} {version}", outcome.describe())]
    TestFailed {
        suite: String,
        image: String,
        version: String,
        outcome: ProcessOutcome,
    },
    #[error("{image} {version} is not Ready; only Ready images are delivered")]
    NotReady { image: String, version: String },
    /// `after`: the earlier environment holds another version (or none).
    #[error("{environment} only gets what {before} got first: {before} has {}, this is {image} {version}", held.as_deref().unwrap_or("nothing"))]
    NotDeliveredBefore {
        environment: String,
        before: String,
        held: Option<String>,
        image: String,
        version: String,
    },
    #[error("delivery of {image} {version} to {environment} {}", outcome.describe())]
    DeliveryFailed {
        image: String,
        version: String,
        environment: String,
        outcome: ProcessOutcome,
    },
}
