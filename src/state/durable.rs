//! Durability: what a commit survives, and the writes that must outlive a power loss
//! (see the module docs of `state`).

use std::path::{Path, PathBuf};

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
}

impl<T> Durable<T> {
    /// Syncs the write-ahead log (or, without one, the state file) and gives the value.
    pub fn sync(self) -> Result<T, StateError> {
        if let Some(file) = &self.file {
            let mut wal = file.clone().into_os_string();
            wal.push("-wal");
            let wal = PathBuf::from(wal);
            // No log: everything was checkpointed into the file (and synced there).
            let synced = sync_data(&wal).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => sync_data(file),
                _ => Err(e),
            });
            synced.map_err(|source| StateError::Sync {
                path: file.clone(),
                source,
            })?;
        }
        Ok(self.value)
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
        }
    }

    /// Runs `write` (one or more commits) with `synchronous=FULL`: when it returns, what it
    /// wrote and everything committed before it is on disk, power loss included.
    pub(super) fn durable<T>(
        &self,
        write: impl FnOnce() -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.set_synchronous("FULL")?;
        let result = write();
        self.set_synchronous("NORMAL")?;
        result
    }
}
