//! imgraph's state: one SQLite file, and the only module that speaks SQL.
//!
//! The file holds runs and node runs (the history `plan` compares keys against), the image
//! registry (versions, provider artifact ids, release status, deliveries), the packages
//! inside each version, a stat cache
//! for input files, a ledger of temporary resources and the lease that keeps two `apply`
//! runs apart. Callers own their serde types: manifests, reasons and outputs cross this
//! boundary as JSON `String`s, so this module knows nothing about plans or graphs.
//!
//! The history changes only through [`Record`]s applied by [`State::apply_record`] (see
//! `record.rs`), which a [`Journal`] can share between machines (`journal.rs`); the lease
//! is behind [`LeaseStore`]; [`open`] picks the backend. The stat cache and the ledger
//! are this machine's own and are written directly.
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
//!   is synced before the caller goes on, which also syncs every commit before it: image
//!   versions (through [`State::durable`], `synchronous=FULL` for that commit), so a number
//!   is never issued twice, and ledger rows, written before the resource they name is
//!   created, which come back as a [`Durable`] the caller syncs after it let go of the
//!   state, so other nodes' records never wait behind that fsync.
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
mod images;
mod import;
pub use images::compare_versions;
pub use import::{HistoryTable, Pushed};
mod journal;
pub use journal::{Journal, JournalError, Seq};
mod lease;
mod lease_store;
pub use lease_store::{LeaseGuard, LeaseHolder, LeaseStore, LeaseWatch, SqliteLease};
mod ledger;
mod lineage;
mod nodes;
mod packages;
mod process;
mod record;
pub use record::{
    decode_batch, encode_batch, BatchError, NewVersion, NodeFacts, Record, RECORD_FORMAT,
};
mod runs;
mod stat_cache;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use lineage::Lineage;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

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
];

/// How long a call waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub type RunId = i64;
pub type NodeRunId = i64;

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

/// The outcome of one stage node in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    Abandoned,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Running => "running",
            NodeStatus::Succeeded => "succeeded",
            NodeStatus::Failed => "failed",
            NodeStatus::Skipped => "skipped",
            NodeStatus::Cancelled => "cancelled",
            NodeStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<NodeStatus> {
        Some(match s {
            "running" => NodeStatus::Running,
            "succeeded" => NodeStatus::Succeeded,
            "failed" => NodeStatus::Failed,
            "skipped" => NodeStatus::Skipped,
            "cancelled" => NodeStatus::Cancelled,
            "abandoned" => NodeStatus::Abandoned,
            _ => return None,
        })
    }
}

/// The outcome of a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Abandoned,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "abandoned" => RunStatus::Abandoned,
            _ => return None,
        })
    }
}

/// An image version's `Release_Status` tag, spelled as the tag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReleaseStatus {
    Candidate,
    Ready,
    Failed,
    /// Pulled out of use by `imgraph revoke` (itself, or the version it was built from):
    /// never an origin, never delivered.
    Revoked,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Candidate => "Candidate",
            ReleaseStatus::Ready => "Ready",
            ReleaseStatus::Failed => "Failed",
            ReleaseStatus::Revoked => "Revoked",
        }
    }

    pub fn parse(s: &str) -> Option<ReleaseStatus> {
        Some(match s {
            "Candidate" => ReleaseStatus::Candidate,
            "Ready" => ReleaseStatus::Ready,
            "Failed" => ReleaseStatus::Failed,
            "Revoked" => ReleaseStatus::Revoked,
            _ => return None,
        })
    }
}

/// An unknown status word read back from the file.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} status `{value}`")]
struct UnknownStatus {
    kind: &'static str,
    value: String,
}

macro_rules! sql_text_enum {
    ($ty:ty, $kind:literal) => {
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                <$ty>::parse(text).ok_or_else(|| {
                    FromSqlError::Other(Box::new(UnknownStatus {
                        kind: $kind,
                        value: text.to_owned(),
                    }))
                })
            }
        }
    };
}
sql_text_enum!(NodeStatus, "node");
sql_text_enum!(RunStatus, "run");
sql_text_enum!(ReleaseStatus, "release");

/// A committed write that already survives a killed process, and survives a power loss
/// (with every commit before it) once [`Durable::sync`] returned. `sync` needs no access
/// to the [`State`]: a caller that shares the state behind a lock lets go of it first, so
/// other writers never wait behind the fsync.
#[must_use = "the write survives a power loss only after sync()"]
#[derive(Debug)]
pub struct Durable<T> {
    value: T,
    /// The state file (its write-ahead log beside it, in WAL mode); `None` in memory.
    file: Option<PathBuf>,
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

/// What a node run was started with.
pub struct NodeStart<'a> {
    pub node_id: &'a str,
    pub key: &'a str,
    pub manifest_json: &'a str,
    pub stanza: &'a str,
    pub upstream_json: &'a str,
    pub reasons_json: &'a str,
    pub log_path: Option<&'a str>,
}

/// How a node run ended, for [`State::finish_nodes`].
#[derive(Debug, Clone, Copy)]
pub struct NodeEnd<'a> {
    pub id: NodeRunId,
    pub status: NodeStatus,
    pub outputs_json: Option<&'a str>,
    pub error: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct NodeRecord {
    pub id: NodeRunId,
    pub run_id: RunId,
    pub node_id: String,
    pub key: String,
    pub manifest_json: String,
    pub stanza: String,
    pub upstream_json: String,
    pub reasons_json: String,
    pub status: NodeStatus,
    pub outputs_json: Option<String>,
    pub error: Option<String>,
    pub log_path: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// What `plan` needs to know about one node's past.
#[derive(Debug, Clone, Default)]
pub struct NodeHistory {
    /// The newest record that succeeded, even if later attempts failed.
    pub last_success: Option<NodeRecord>,
    /// The newest record of a node that actually started (whatever its status, including
    /// `Running`/`Abandoned`); records of nodes that never started (`record_not_run`) are
    /// left out so a skip does not hide the failure that came before it.
    pub last_attempt: Option<NodeRecord>,
}

#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: RunId,
    pub command: String,
    pub options_json: String,
    pub status: RunStatus,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub pid: u32,
}

#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub image: String,
    pub version: String,
    pub artifact_id: String,
    pub provider: String,
    pub key: String,
    pub status: ReleaseStatus,
    pub built_at: i64,
    pub run_id: Option<RunId>,
    /// Environments this version was delivered to, in first-delivery order. Filled when
    /// reading; ignored by `record_image` (use `record_delivery`).
    pub environments: Vec<String>,
    /// Environments whose latest delivery of this image is this version: what they hold
    /// now. Filled by [`State::images`] only.
    pub holding: Vec<String>,
    /// `IMAGE@VERSION` this version was built from, when built from another image (and
    /// recorded since schema 5).
    pub origin: Option<String>,
    /// Why it was revoked, when it is.
    pub revoked_reason: Option<String>,
}

/// What the hasher saw when it last hashed a file: the stat cache stores the hasher's
/// own entries as they are.
pub use crate::hash::CachedStat as StatEntry;

/// A temporary resource (instance, staging folder, volume, ...) recorded before it exists.
#[derive(Debug, Clone)]
pub struct LedgerEntry {
    pub id: i64,
    pub run_id: Option<RunId>,
    pub node_id: String,
    pub provider: String,
    pub kind: String,
    pub resource: String,
    pub purpose: String,
    pub created_at: i64,
    pub destroyed_at: Option<i64>,
}

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

/// An open state file.
pub struct State {
    conn: Connection,
    path: PathBuf,
    read_only: bool,
    /// The shared journal the history goes through, if any (see `journal.rs`).
    journal: Option<journal::Attached>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("path", &self.path).finish()
    }
}

impl State {
    /// Opens (creating it and its parent folders if needed) the state file and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<State, StateError> {
        Self::open_with(path, MIGRATIONS)
    }

    /// Opens the state file for a command that only reads it (`plan`, `images`,
    /// `history`, `lock status`), and never creates it: a missing file reads as an empty
    /// state held in memory. A file that cannot be written (a read-only folder or mount)
    /// is opened read-only: without WAL set-up and without migrations, as an immutable
    /// file if SQLite cannot even create its shared-memory index there.
    /// [`State::is_read_only`] then tells callers to skip what they would only cache.
    pub fn open_for_reading(path: &Path) -> Result<State, StateError> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Self::in_memory(path),
            _ => {}
        }
        let writable = Self::connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE).and_then(|mut s| {
            s.configure()?;
            s.migrate(MIGRATIONS)?;
            // SQLite opens a write-protected file read-only without saying so.
            s.read_only = s
                .conn
                .is_readonly(rusqlite::MAIN_DB)
                .map_err(|e| s.sql_err(e, "check whether the state file is writable"))?;
            Ok(s)
        });
        let first = match writable {
            Ok(state) => return Ok(state),
            // A newer schema is refused whatever the permissions.
            Err(e @ StateError::NewerSchema { .. }) => return Err(e),
            Err(e) => e,
        };
        for immutable in [false, true] {
            let opened = Self::connect_read_only(path, immutable).and_then(|s| {
                s.check_readable()?;
                Ok(s)
            });
            match opened {
                Ok(state) => return Ok(state),
                Err(e @ StateError::NewerSchema { .. }) => return Err(e),
                Err(_) => {}
            }
        }
        Err(first)
    }

    /// An empty state in memory, named after `path` in messages.
    fn in_memory(path: &Path) -> Result<State, StateError> {
        let conn = Connection::open_in_memory().map_err(|source| StateError::Sqlite {
            path: path.to_path_buf(),
            context: "open an empty state in memory".into(),
            source,
        })?;
        let state = State {
            conn,
            path: path.to_path_buf(),
            read_only: false,
            journal: None,
        };
        state.migrate(MIGRATIONS)?;
        Ok(state)
    }

    fn connect(path: &Path, mode: OpenFlags) -> Result<State, StateError> {
        let flags = mode | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|source| StateError::Sqlite {
                path: path.to_path_buf(),
                context: "open the state file".into(),
                source,
            })?;
        Ok(State {
            conn,
            path: path.to_path_buf(),
            read_only: !mode.contains(OpenFlags::SQLITE_OPEN_READ_WRITE),
            journal: None,
        })
    }

    fn connect_read_only(path: &Path, immutable: bool) -> Result<State, StateError> {
        if !immutable {
            return Self::connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY);
        }
        // `immutable=1`: SQLite neither locks nor looks for a WAL, which is what a file on
        // a read-only mount allows. The URI needs an absolute, percent-encoded path.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut uri = String::from("file:");
        for b in absolute.as_os_str().as_encoded_bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                    uri.push(char::from(*b))
                }
                _ => uri.push_str(&format!("%{b:02X}")),
            }
        }
        uri.push_str("?immutable=1");
        let mut state = Self::connect(Path::new(&uri), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        state.path = path.to_path_buf();
        Ok(state)
    }

    /// For a read-only connection: refuses a newer schema and proves the file is readable.
    fn check_readable(&self) -> Result<(), StateError> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.sql_err(e, "set the busy timeout"))?;
        let known = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
        let current = self.schema_version()?;
        if current > known {
            return Err(self.newer_schema(current, known));
        }
        Ok(())
    }

    /// Whether this state was opened read-only: writes would fail, so callers skip what
    /// they would only cache (the stat cache).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn open_with(path: &Path, migrations: &[&str]) -> Result<State, StateError> {
        let path = path.to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
                path: path.clone(),
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(&path).map_err(|source| StateError::Sqlite {
            path: path.clone(),
            context: "open the state file".into(),
            source,
        })?;
        let state = State {
            conn,
            path,
            read_only: false,
            journal: None,
        };
        state.configure()?;
        state.migrate(migrations)?;
        Ok(state)
    }

    fn configure(&self) -> Result<(), StateError> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.sql_err(e, "set the busy timeout"))?;
        let mode: String = self
            .conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| self.sql_err(e, "switch to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Some file systems (network mounts) cannot share the WAL index; SQLite then
            // keeps its rollback journal, which is still consistent, only less concurrent.
            tracing::warn!(path = %self.path.display(), mode, "state file is not in WAL mode");
        }
        self.conn
            .pragma_update(None, "foreign_keys", true)
            .map_err(|e| self.sql_err(e, "enable foreign keys"))?;
        if crate::crash::enabled() {
            // Every commit is a crash point, taken before SQLite makes it durable.
            self.conn.commit_hook(Some(|| {
                crate::crash::point("state: commit");
                false
            }));
        }
        self.set_synchronous("NORMAL")?;
        Ok(())
    }

    fn set_synchronous(&self, level: &str) -> Result<(), StateError> {
        self.conn
            .pragma_update(None, "synchronous", level)
            .map_err(|e| self.sql_err(e, format!("set synchronous={level}")))
    }

    /// `value`, committed with `synchronous=NORMAL`, for the caller to sync.
    fn unsynced<T>(&self, value: T) -> Durable<T> {
        Durable {
            value,
            file: (self.conn.path().is_some_and(|p| !p.is_empty())).then(|| self.path.clone()),
        }
    }

    /// Runs `write` (one or more commits) with `synchronous=FULL`: when it returns, what it
    /// wrote and everything committed before it is on disk, power loss included.
    fn durable<T>(&self, write: impl FnOnce() -> Result<T, StateError>) -> Result<T, StateError> {
        self.set_synchronous("FULL")?;
        let result = write();
        self.set_synchronous("NORMAL")?;
        result
    }

    fn migrate(&self, migrations: &[&str]) -> Result<(), StateError> {
        let known = u32::try_from(migrations.len()).unwrap_or(u32::MAX);
        let current = self.schema_version()?;
        if current > known {
            return Err(self.newer_schema(current, known));
        }
        if current == known {
            return Ok(());
        }
        // Foreign keys are off while migrations run (a migration may rebuild a table that
        // others reference: SQLite's table-rebuild procedure) and checked before commit.
        // The pragma is a no-op inside a transaction, hence around it.
        let enforced: bool = self
            .conn
            .pragma_query_value(None, "foreign_keys", |row| row.get(0))
            .map_err(|e| self.sql_err(e, "read the foreign keys setting"))?;
        self.conn
            .pragma_update(None, "foreign_keys", false)
            .map_err(|e| self.sql_err(e, "turn foreign keys off for the migration"))?;
        let migrated = self.migrate_in_tx(migrations, known);
        self.conn
            .pragma_update(None, "foreign_keys", enforced)
            .map_err(|e| self.sql_err(e, "turn foreign keys back on"))?;
        migrated
    }

    fn migrate_in_tx(&self, migrations: &[&str], known: u32) -> Result<(), StateError> {
        let tx = self.write_tx("migrate the schema")?;
        // Another process may have migrated between the read above and taking the lock.
        let current = self.schema_version()?;
        if current > known {
            return Err(self.newer_schema(current, known));
        }
        for (index, sql) in migrations.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql)
                .map_err(|e| self.sql_err(e, format!("apply schema migration {}", index + 1)))?;
        }
        let dangling: i64 = tx
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
                row.get(0)
            })
            .map_err(|e| self.sql_err(e, "check foreign keys after the migration"))?;
        if dangling > 0 {
            return Err(StateError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "{dangling} rows refer to rows that do not exist after the schema migration"
                ),
            });
        }
        tx.pragma_update(None, "user_version", known)
            .map_err(|e| self.sql_err(e, "record the schema version"))?;
        tx.commit()
            .map_err(|e| self.sql_err(e, "commit the schema migration"))
    }

    fn newer_schema(&self, found: u32, known: u32) -> StateError {
        StateError::NewerSchema {
            path: self.path.clone(),
            found,
            known,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the file (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, StateError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| self.sql_err(e, "read the schema version"))?;
        u32::try_from(version).map_err(|_| StateError::Corrupt {
            path: self.path.clone(),
            detail: format!("schema version {version} is out of range"),
        })
    }

    /// Gives the space of deleted and shrunk rows back to the file system: `VACUUM`, then
    /// a checkpoint that empties the write-ahead log. Returns the file's size in bytes
    /// before and after (the log included).
    pub fn compact(&self) -> Result<(u64, u64), StateError> {
        let before = self.size_on_disk();
        self.conn
            .execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(|e| self.sql_err(e, "compact the state file"))?;
        Ok((before, self.size_on_disk()))
    }

    /// The state file's size plus its write-ahead log's, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        let wal = {
            let mut p = self.path.clone().into_os_string();
            p.push("-wal");
            PathBuf::from(p)
        };
        [self.path.as_path(), wal.as_path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
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
