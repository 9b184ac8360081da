//! The lease behind a trait, so a shared state can keep its lease where its journal is.
//!
//! [`LeaseStore`] is what `apply`, `gc`, `revoke`, `state recover` and `lock status|break`
//! use; [`SqliteLease`] keeps it in the state file's `lease` row (see `lease.rs`). A
//! taken lease is a [`LeaseGuard`], given back when released or dropped, so every way out
//! of a command (an error, a panic, a poisoned state mutex) gives it back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::process::{own_host, own_identity};
use super::{Access, State, StateError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    Acquired,
    HeldBy {
        pid: u32,
        /// The host the holder runs on (`None` in leases written before hosts were kept).
        host: Option<String>,
        holder: String,
        since: i64,
    },
}

/// The lease as it stands, for `imgraph lock status` and `imgraph lock break`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub pid: u32,
    pub host: Option<String>,
    /// What holds it, e.g. `imgraph apply`.
    pub holder: String,
    pub since: i64,
    pub liveness: Liveness,
    /// The holder's command line, where the lease keeps it (the shared lease).
    pub command: Option<String>,
    /// When the holder last renewed it (ms since the epoch), for a lease with a heartbeat.
    pub heartbeat: Option<i64>,
}

/// Whether the holder of a lease still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Running on this host.
    Alive,
    /// Gone from this host (the next apply takes the lease over).
    Gone,
    /// Runs on another host, where this process cannot look.
    OtherHost,
}

/// Who takes a lease: written with it, shown by `imgraph lock status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// What holds it, e.g. `imgraph apply`.
    pub command: String,
    /// The host it runs on, when it can be read.
    pub host: Option<String>,
    pub pid: u32,
    /// The process's boot id and start time, so a reused pid is not taken for it.
    pub identity: Option<String>,
}

impl LeaseHolder {
    /// This process, running `command`.
    pub fn this_process(command: &str) -> LeaseHolder {
        LeaseHolder {
            command: command.to_owned(),
            host: own_host().map(str::to_owned),
            pid: std::process::id(),
            identity: own_identity().map(str::to_owned),
        }
    }
}

/// Where the apply lease is kept (invariant 5: two applies on one state never interleave).
///
/// Contract for implementations:
/// - `acquire` takes the lease for `holder` or says who holds it; taking it again as the
///   same holder (same command, pid and identity) succeeds. A holder known to be gone is
///   taken over: its process is gone from this host, or (for a store with a time to
///   live) its heartbeat is older than that.
/// - `renew` is the holder's heartbeat; a store that judges liveness otherwise does
///   nothing. It fails when `holder` no longer holds the lease.
/// - `release` gives the lease back if `holder` holds it, and otherwise does nothing.
/// - `status` reads the lease as it stands; `break_lease` removes it whoever holds it
///   (the caller decided that is safe) and says whether there was one.
pub trait LeaseStore: Send + Sync + std::fmt::Debug {
    fn acquire(&self, holder: &LeaseHolder) -> Result<LeaseOutcome, StateError>;

    fn renew(&self, holder: &LeaseHolder) -> Result<(), StateError>;

    fn release(&self, holder: &LeaseHolder) -> Result<(), StateError>;

    fn status(&self) -> Result<Option<Lease>, StateError>;

    fn break_lease(&self) -> Result<bool, StateError>;

    /// Whether `holder` still holds the lease as far as this process knows, without
    /// asking the store: a store with a heartbeat fails with [`StateError::LeaseLost`]
    /// once a renewal was refused or none got through for its time to live. An apply
    /// checks this while it runs and stops when it fails.
    fn check(&self, _holder: &LeaseHolder) -> Result<(), StateError> {
        Ok(())
    }

    /// The time to live of a lease with a heartbeat (`None`: the holder's process
    /// decides, as for the state file's lease).
    fn time_to_live(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The lease in the state file, through a connection of its own: releasing it never waits
/// for the [`State`] an apply shares between its tasks.
#[derive(Debug)]
pub struct SqliteLease {
    path: PathBuf,
    access: Access,
    state: Mutex<Option<State>>,
    /// The history's serial when the lease was taken: a release that finds it moved
    /// folds the write-ahead log into the file (see [`State::fold_log`]).
    serial_at_acquire: Mutex<Option<i64>>,
}

impl SqliteLease {
    /// The lease of the state file at `path`, opened when first used. With
    /// [`Access::ReadOnly`] the file is never created: where there is none, there is no
    /// lease to read, and taking it excludes nobody (the state is held in memory).
    pub fn new(path: &Path, access: Access) -> SqliteLease {
        SqliteLease {
            path: path.to_path_buf(),
            access,
            state: Mutex::new(None),
            serial_at_acquire: Mutex::new(None),
        }
    }

    /// Runs `use_it` on the file's state, or gives `absent()` when the file does not
    /// exist and may not be created (`create` and read-write access).
    fn with<T>(
        &self,
        create: bool,
        use_it: impl FnOnce(&State) -> Result<T, StateError>,
        absent: impl FnOnce() -> T,
    ) -> Result<T, StateError> {
        let mut slot = lock(&self.state);
        if slot.is_none() {
            let may_create = create && self.access == Access::ReadWrite;
            if !may_create && std::fs::symlink_metadata(&self.path).is_err() {
                return Ok(absent());
            }
            *slot = Some(match self.access {
                Access::ReadWrite => State::open(&self.path)?,
                Access::ReadOnly => State::open_for_reading(&self.path)?,
            });
        }
        match slot.as_ref() {
            Some(state) => use_it(state),
            None => Ok(absent()),
        }
    }
}

/// A poisoned mutex only means a panic elsewhere; the value is still sound.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LeaseStore for SqliteLease {
    fn acquire(&self, holder: &LeaseHolder) -> Result<LeaseOutcome, StateError> {
        self.with(
            true,
            |s| {
                let outcome = s.acquire_lease_as(holder)?;
                if outcome == LeaseOutcome::Acquired && !s.is_read_only() {
                    *lock(&self.serial_at_acquire) = Some(s.lineage()?.serial);
                }
                Ok(outcome)
            },
            || LeaseOutcome::Acquired,
        )
    }

    /// Liveness is the holder's process (pid and identity), so there is no heartbeat.
    fn renew(&self, _holder: &LeaseHolder) -> Result<(), StateError> {
        Ok(())
    }

    /// Gives the lease back; when the history changed while it was held (a run was
    /// recorded), the write-ahead log is folded into the file, so the state file alone
    /// holds the run (a no-change apply leaves its two lease writes in the log and syncs
    /// nothing).
    fn release(&self, holder: &LeaseHolder) -> Result<(), StateError> {
        self.with(
            false,
            |s| {
                s.release_lease_of(holder)?;
                let taken_at = lock(&self.serial_at_acquire).take();
                match taken_at {
                    Some(serial) if s.lineage()?.serial != serial => s.fold_log(),
                    _ => Ok(()),
                }
            },
            || (),
        )
    }

    fn status(&self) -> Result<Option<Lease>, StateError> {
        self.with(false, State::lease, || None)
    }

    fn break_lease(&self) -> Result<bool, StateError> {
        self.with(false, State::break_lease, || false)
    }
}

/// A lease this process holds; see the module doc.
#[must_use = "dropping the guard gives the lease back at once"]
#[derive(Debug)]
pub struct LeaseGuard {
    store: Arc<dyn LeaseStore>,
    holder: LeaseHolder,
    released: bool,
}

impl LeaseGuard {
    /// The guard of a lease `store` has just given `holder`.
    pub fn new(store: Arc<dyn LeaseStore>, holder: LeaseHolder) -> LeaseGuard {
        LeaseGuard {
            store,
            holder,
            released: false,
        }
    }

    /// Who holds it.
    pub fn holder(&self) -> &LeaseHolder {
        &self.holder
    }

    /// The holder's heartbeat (see [`LeaseStore::renew`]).
    pub fn renew(&self) -> Result<(), StateError> {
        self.store.renew(&self.holder)
    }

    /// Whether the lease is still held (see [`LeaseStore::check`]).
    pub fn check(&self) -> Result<(), StateError> {
        self.store.check(&self.holder)
    }

    /// The store's time to live (see [`LeaseStore::time_to_live`]).
    pub fn time_to_live(&self) -> Option<std::time::Duration> {
        self.store.time_to_live()
    }

    /// A handle that checks this lease from another task (see [`LeaseStore::check`]).
    pub fn watch(&self) -> LeaseWatch {
        LeaseWatch {
            store: self.store.clone(),
            holder: self.holder.clone(),
        }
    }

    /// Gives the lease back, saying so when that fails.
    pub fn release(mut self) -> Result<(), StateError> {
        self.released = true;
        self.store.release(&self.holder)
    }
}

/// Checks a held lease from elsewhere (an apply's watcher task), see [`LeaseGuard::watch`].
#[derive(Debug, Clone)]
pub struct LeaseWatch {
    store: Arc<dyn LeaseStore>,
    holder: LeaseHolder,
}

impl LeaseWatch {
    pub fn check(&self) -> Result<(), StateError> {
        self.store.check(&self.holder)
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Err(e) = self.store.release(&self.holder) {
            tracing::warn!(error = %crate::text::error_chain(&e), "the apply lease was not given back");
        }
    }
}
