//! The crate's top-level error: every module's typed error, plus the mapping to the one
//! exit-code table in [`crate::exit`].

use std::path::PathBuf;

use miette::Diagnostic;

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
    #[error("another apply holds the state lock (pid {pid}, {holder}) since {since}")]
    #[diagnostic(help(
        "wait for it to finish; if that process is gone, the next apply takes the lock over"
    ))]
    Locked {
        pid: u32,
        holder: String,
        since: String,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Locked { .. } => crate::exit::LOCKED,
            _ => crate::exit::ERROR,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
