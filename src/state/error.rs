//! What can go wrong with the state, as one error type.

use std::path::PathBuf;

use super::JournalError;

/// A state failure. Messages read after "failed to ..." and name the state file; the
/// SQLite error, when there is one, is the `source()`.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("create the folder {} for state file {}", dir.display(), path.display())]
    CreateDir {
        path: PathBuf,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "open state file {}: state file was written by a newer imgraph (schema {found}, this build knows {known})",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("{context} (state file {})", path.display())]
    Sqlite {
        path: PathBuf,
        context: String,
        source: rusqlite::Error,
    },
    #[error("find {what} in state file {}", path.display())]
    NotFound { path: PathBuf, what: String },
    #[error(
        "record image {image} {version}: that version is already recorded in state file {}",
        path.display()
    )]
    VersionExists {
        path: PathBuf,
        image: String,
        version: String,
    },
    #[error("number the next version of image {image}: {detail}")]
    InvalidSeries {
        image: String,
        series: String,
        detail: String,
    },
    #[error("read state file {}: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("undo the revocation of image {image} {version}: {detail}")]
    NotRevoked {
        image: String,
        version: String,
        detail: String,
    },
    /// The journal refused or failed an append or a read; a
    /// [`JournalError::Conflict`] means another writer appended first (sync, decide again).
    #[error("{context} (journal {journal})")]
    Journal {
        journal: String,
        context: String,
        source: JournalError,
    },
    /// The shared state's store failed or refused (connecting, the conditional-write
    /// check, the lease); the remote error is the source.
    #[error("{context} {location}")]
    SharedStore {
        location: String,
        context: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("open the shared state {location}: this imgraph was built without shared state (cargo feature `s3`)")]
    NoSharing { location: String },
    /// Another runner took the lease over (this one's heartbeat was older than
    /// `lease-ttl`), or it could not be renewed for that long.
    #[error("hold the lease of {lease}: {detail}")]
    LeaseLost { lease: String, detail: String },
    #[error("sync {} to disk", path.display())]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{context}: state file {} {detail}", path.display())]
    JournalMismatch {
        path: PathBuf,
        context: String,
        detail: String,
    },
}

impl StateError {
    /// Whether this is a journal append that lost to another writer's.
    pub fn is_journal_conflict(&self) -> bool {
        matches!(
            self,
            StateError::Journal {
                source: JournalError::Conflict { .. },
                ..
            }
        )
    }
}
