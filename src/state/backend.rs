//! Where a project's state lives, and the one place that opens it.
//!
//! A backend is a [`State`] (SQLite: the query engine and the ledger, with the stat cache
//! beside it, with or without a [`super::Journal`] for the history) and a [`LeaseStore`]: the local
//! file alone, or a shared state on object storage (`s3.rs`, cargo feature `s3`) with the
//! local file as its mirror and cache. To add a backend: implement `Journal` and
//! `LeaseStore` for it, add its arm to [`Backend`] and to [`open`] (attach the journal
//! with [`State::with_journal`] on the local file, which becomes its mirror and cache),
//! and map the project's `state { … }` stanza to it in `workspace`. This file is the one
//! place in `state` that names a cargo feature.

use std::path::PathBuf;
use std::sync::Arc;

use super::lease_store::{LeaseStore, SqliteLease};
use super::{Journal, State, StateError};
use crate::config::model::SharedState;

#[cfg(feature = "s3")]
#[path = "s3.rs"]
mod s3;

/// Where the state is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file holds everything (the default, `state path="…"`).
    Local { path: PathBuf },
    /// `state { s3 bucket=… prefix=…; lease-ttl … }`: the history in a journal of objects
    /// and the lease in one object, both fenced by conditional writes; the file at `path`
    /// is the mirror and cache (the ledger stays in it alone, the stat cache beside it).
    S3 { path: PathBuf, shared: SharedState },
}

/// What the command does with the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Records work: the file is created and migrated if needed.
    ReadWrite,
    /// Only reads (`plan`, `images`, `history`, `lock status`): nothing is created, and a
    /// read-only file is read as it is (see [`State::open_for_reading`]).
    ReadOnly,
}

/// Opens the state of `backend` with its lease.
pub fn open(backend: &Backend, access: Access) -> Result<(State, Arc<dyn LeaseStore>), StateError> {
    match backend {
        Backend::Local { path } => {
            let state = match access {
                Access::ReadWrite => State::open(path)?,
                Access::ReadOnly => State::open_for_reading(path)?,
            };
            let lease: Arc<dyn LeaseStore> = Arc::new(SqliteLease::new(path, access));
            Ok((state, lease))
        }
        #[cfg(feature = "s3")]
        Backend::S3 { path, shared } => s3::open(path, shared, access),
        #[cfg(not(feature = "s3"))]
        Backend::S3 { shared, .. } => Err(StateError::NoSharing {
            location: shared.location.to_string(),
        }),
    }
}

/// A shared backend's journal and lease.
pub type SharedParts = (Arc<dyn Journal>, Arc<dyn LeaseStore>);

/// The journal and lease of a shared backend alone, without a local mirror (`imgraph
/// state push` writes a local history into it); `None` for the local file.
pub fn connect_shared(backend: &Backend) -> Result<Option<SharedParts>, StateError> {
    match backend {
        Backend::Local { .. } => Ok(None),
        #[cfg(feature = "s3")]
        Backend::S3 { shared, .. } => s3::connect(shared, Access::ReadWrite).map(Some),
        #[cfg(not(feature = "s3"))]
        Backend::S3 { shared, .. } => Err(StateError::NoSharing {
            location: shared.location.to_string(),
        }),
    }
}
