//! imgraph's state: one SQLite file, and the only module that speaks SQL.
//!
//! The file holds runs and node runs (the history `plan` compares keys against), the image
//! registry (versions, provider artifact ids, release status, deliveries), the packages
//! inside each version, a ledger of temporary resources and the lease that keeps two
//! `apply` runs apart; the stat cache for input files is a file beside it
//! (`stat_cache.rs`). Callers own their serde types: manifests, reasons and outputs cross
//! this boundary as JSON `String`s, so this module knows nothing about plans or graphs.
//!
//! The history changes only through [`Record`]s applied by [`State::apply_record`] (see
//! `record.rs`), which a [`Journal`] can share between machines (`journal.rs`); the lease
//! is behind [`LeaseStore`]; [`open`] picks the backend. The stat cache and the ledger
//! are this machine's own and are written directly.
//!
//! Where things are: each table's queries and row type in its own file (`runs.rs`,
//! `nodes.rs`, `images.rs`, `packages.rs`, `ledger.rs`, `lease.rs`, `stat_cache.rs`,
//! `lineage.rs`); opening the file, its settings and migrations in `file.rs`; what a
//! commit survives in `durable.rs`; the stored status words in `status.rs`; the error in
//! `error.rs`.
//!
//! How it stays consistent:
//! - The journal is WAL, so readers (`plan`) never block the writer (`apply`) and a crash
//!   at any point leaves the last committed state. `busy_timeout` makes a second process
//!   wait up to 5 s for a write lock instead of failing at once.
//! - Every call is its own transaction. Calls that read and then write open the
//!   transaction with `BEGIN IMMEDIATE`: a deferred transaction that later upgrades to a
//!   writer can fail with `SQLITE_BUSY` without waiting, which is the error WAL users meet.
//! - The schema is an append-only list of numbered files in `schema/`, applied in one
//!   transaction by comparing `PRAGMA user_version`. A file written by a newer imgraph is
//!   refused rather than guessed at.
//! - Liveness of another process (stale runs, the lease) is decided by its pid plus, on
//!   Linux, the boot id and the process start time, so a pid reused by an unrelated
//!   process - common in CI containers, where every job's main process gets the same
//!   small pid - is not mistaken for the process that wrote the row.
//!
//! - Durability: `synchronous=NORMAL`, so a commit is safe against a killed process (the
//!   WAL holds it) without an fsync of its own; only a power loss or kernel crash can take
//!   back the last commits, and then a node merely runs again. What must outlive even that
//!   comes back as a [`Durable`] the caller syncs before going on, after it let go of the
//!   state, so other nodes' records never wait behind that fsync (a sync of the log also
//!   makes every commit before it durable): image versions, so a number is never issued
//!   twice, and ledger rows, written before the resource they name is created. Callers
//!   that sync at the same time share one sync ([`crate::group_sync::GroupSync`]).
//! - The write-ahead log is kept when the last connection closes (no fold into the file,
//!   no fsync, no deleting and re-creating it: four fsyncs a command saved); it is folded
//!   in when the lease of a run that changed the history is given back
//!   ([`State::fold_log`]), so after such a run the file alone holds the whole state.
//!
//! - Commands that only read (`plan`, `images`, `history`) open it with
//!   [`State::open_for_reading`]: never created, and usable on a read-only folder.
//!
//! Trade-offs: one `State` owns one connection and is `Send` but not `Sync`; share it
//! behind a mutex or open one `State` per thread (WAL makes that cheap). Run history is
//! kept; `imgraph gc` shrinks the manifests no plan reads any more (every node run but
//! each node's last success and last attempt) and compacts the file.

mod backend;
pub use backend::{connect_shared, open, Access, Backend, SharedParts};
mod durable;
pub use durable::Durable;
mod error;
pub use error::StateError;
mod file;
mod images;
pub use images::{compare_versions, ImageRecord, ImageVersion};
mod import;
pub use import::{HistoryTable, Pushed};
mod journal;
pub use journal::{Journal, JournalError, Seq};
mod lease;
mod lease_store;
pub use lease_store::{
    Lease, LeaseGuard, LeaseHolder, LeaseOutcome, LeaseStore, LeaseWatch, Liveness, SqliteLease,
};
mod ledger;
pub use ledger::LedgerEntry;
mod lineage;
pub use lineage::Lineage;
mod nodes;
pub use nodes::{NodeEnd, NodeHistory, NodeRecord, NodeStart};
mod packages;
mod process;
mod record;
pub use record::{decode_batch, encode_batch, BatchError, NodeFacts, Record, RECORD_FORMAT};
mod runs;
pub use runs::RunRecord;
mod stat_cache;
mod status;
pub use status::{NodeStatus, ReleaseStatus, RunStatus};
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, Transaction, TransactionBehavior};

/// The migrations, in order: entry `i` moves the schema from version `i` to `i + 1`.
/// Only ever append; a released file is never edited.
const MIGRATIONS: &[&str] = &[
    include_str!("../../schema/0001_init.sql"),
    include_str!("../../schema/0002_stat_cache_content_digests.sql"),
    include_str!("../../schema/0003_lease_host.sql"),
    include_str!("../../schema/0004_lineage.sql"),
    include_str!("../../schema/0005_revoked.sql"),
    include_str!("../../schema/0006_packages.sql"),
    include_str!("../../schema/0007_journal_position.sql"),
    include_str!("../../schema/0008_stat_cache_file.sql"),
];

pub type RunId = i64;
pub type NodeRunId = i64;

/// What the hasher saw when it last hashed a file: the stat cache stores the hasher's
/// own entries as they are.
pub use crate::hash::CachedStat as StatEntry;

/// An open state file.
pub struct State {
    conn: Connection,
    path: PathBuf,
    read_only: bool,
    /// The shared journal the history goes through, if any (see `journal.rs`).
    journal: Option<journal::Attached>,
    /// The syncs of the write-ahead log, shared by every [`Durable`] of this connection.
    log_syncs: std::sync::Arc<crate::group_sync::GroupSync>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("path", &self.path).finish()
    }
}

impl State {
    /// Whether this state was opened read-only: writes would fail, so callers skip what
    /// they would only cache (the stat cache).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write transaction that takes the write lock up front (see the module docs).
    fn write_tx(&self, context: &str) -> Result<Transaction<'_>, StateError> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.sql_err(e, format!("{context} (begin transaction)")))
    }

    /// A read transaction, so several queries see one snapshot.
    fn read_tx(&self, context: &str) -> Result<Transaction<'_>, StateError> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Deferred)
            .map_err(|e| self.sql_err(e, format!("{context} (begin transaction)")))
    }

    fn sql_err(&self, source: rusqlite::Error, context: impl Into<String>) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            context: context.into(),
            source,
        }
    }

    fn not_found(&self, what: impl Into<String>) -> StateError {
        StateError::NotFound {
            path: self.path.clone(),
            what: what.into(),
        }
    }
}

pub use crate::host::now_ms;

/// Whether a process is alive and, when its recorded identity is known, still the same one.
pub fn process_is_alive(pid: u32, identity: Option<&str>) -> bool {
    process::is_alive(pid, identity)
}

/// This machine's host name, as leases record it.
pub fn host_name() -> Option<&'static str> {
    process::own_host()
}

/// A process's identity (boot id and start time) for [`process_is_alive`].
pub fn process_identity(pid: u32) -> Option<String> {
    process::identity_of(pid)
}
