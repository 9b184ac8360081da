//! Durability: what a commit survives, and the writes that must outlive a power loss
//! (see the module docs of `state`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::group_sync::GroupSync;

use super::{State, StateError};

/// A committed write that already survives a killed process, and survives a power loss
/// (with every commit before it) once [`Durable::sync`] returned. `sync` needs no access
/// to the [`State`]: a caller that shares the state behind a lock lets go of it first, so
/// other writers never wait behind the fsync.
#[must_use = "the write survives a power loss only after sync()"]
#[derive(Debug)]
pub struct Durable<T> {
    value: T,
    /// The state file (its write-ahead log beside it, in WAL mode); `None` in memory.
    pub(super) file: Option<PathBuf>,
    /// Shared with every other write of the same connection waiting for its sync: one
    /// sync of the log that starts after a commit covers it, whoever runs it.
    pub(super) syncs: Arc<GroupSync>,
}

impl<T> Durable<T> {
    /// Syncs the write-ahead log (or, without one, the state file) and gives the value.
    /// Callers that sync at the same time share a sync (see [`GroupSync`]).
    pub fn sync(self) -> Result<T, StateError> {
        if let Some(file) = &self.file {
            let mut wal = file.clone().into_os_string();
            wal.push("-wal");
            let wal = PathBuf::from(wal);
            self.syncs
                .sync(|| {
                    // No log: everything was checkpointed into the file (and synced there).
                    sync_data(&wal).or_else(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => sync_data(file),
                        _ => Err(e),
                    })
                })
                .map_err(|source| StateError::Sync {
                    path: file.clone(),
                    source,
                })?;
        }
        Ok(self.value)
    }

    /// The value without the sync: for a write that needs to survive a killed process
    /// only (which a commit already does), never one a power loss must not take back.
    pub fn committed(self) -> T {
        self.value
    }
}

fn sync_data(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_data()
}

impl State {
    pub(super) fn set_synchronous(&self, level: &str) -> Result<(), StateError> {
        self.conn
            .pragma_update(None, "synchronous", level)
            .map_err(|e| self.sql_err(e, format!("set synchronous={level}")))
    }

    /// Whether this state is a file (not an empty state held in memory).
    pub(super) fn on_disk(&self) -> bool {
        self.conn.path().is_some_and(|p| !p.is_empty())
    }

    /// `value`, committed with `synchronous=NORMAL`, for the caller to sync.
    pub(super) fn unsynced<T>(&self, value: T) -> Durable<T> {
        Durable {
            value,
            file: self.on_disk().then(|| self.path.clone()),
            syncs: self.log_syncs.clone(),
        }
    }
}
