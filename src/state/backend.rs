//! Where a project's state lives, and the one place that opens it.
//!
//! A backend is a [`State`] (SQLite: the query engine, the stat cache and the ledger,
//! with or without a [`super::Journal`] for the history) and a [`LeaseStore`]. Today
//! there is one arm, the local file. To add a backend: implement `Journal` and
//! `LeaseStore` for it, add its arm to [`Backend`] and to [`open`] (attach the journal
//! with [`State::with_journal`] on the local file, which becomes its mirror and cache),
//! and map the project's `state { … }` stanza to it in `workspace`.

use std::path::PathBuf;
use std::sync::Arc;

use super::lease_store::{LeaseStore, SqliteLease};
use super::{State, StateError};

/// Where the state is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file holds everything (the default, `state path="…"`).
    Local { path: PathBuf },
    // The `s3` arm goes here (`state { s3 bucket=… prefix=… }`): the same local file as
    // mirror and cache, a journal of records and a lease on object storage.
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
    }
}
