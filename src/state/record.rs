//! Records: the only way the history changes.
//!
//! The history is every table that records an outcome: runs, node runs, image versions
//! and their statuses, deliveries, revocations and package lists. Each change to it is
//! one typed [`Record`], applied by [`State::apply_record`]; the recording methods of
//! [`State`] (`begin_run`, `start_node`, `record_built_image`, `record_delivery`, …) only
//! decide their records and hand them to one writer. What a record needs is in it: ids
//! (run, node run, delivery) and times are decided before it is written, so replaying the
//! same records in the same order into an empty state file gives the same rows on every
//! machine. That is what lets a [`super::Journal`] share the history: each runner keeps
//! SQLite as its query engine and cache, and the journal carries the records.
//!
//! The stat cache, the ledger of temporary resources and the lease are not history: they
//! belong to one machine and are written directly.

use crate::graph::NodeId;
use serde::{Deserialize, Serialize};

use super::images::ImageVersion;
use super::import::HistoryTable;
use super::{NodeRunId, NodeStatus, ReleaseStatus, RunId, RunStatus, State, StateError};
use crate::packages::Inventory;

/// The version of the record encoding ([`encode_batch`]). Bump it when a record changes
/// shape; a reader refuses a batch of a newer format.
pub const RECORD_FORMAT: u32 = 1;

/// One change to the history. Serialised as JSON with a `record` tag in kebab-case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub enum Record {
    /// A command that records work started (`apply`, `state recover`, …).
    RunStarted {
        run: RunId,
        command: String,
        options_json: String,
        at: i64,
        pid: u32,
        /// The process's identity (boot id and start time), when the platform tells it.
        proc_start: Option<String>,
    },
    /// A run ended (or, with `Running`, was marked running again).
    RunFinished {
        run: RunId,
        status: RunStatus,
        at: Option<i64>,
    },
    /// A run whose process is gone: it and its running node runs are `Abandoned`.
    RunAbandoned { run: RunId, pid: u32, at: i64 },
    /// A stage node started in `run`.
    NodeStarted {
        node_run: NodeRunId,
        run: RunId,
        node: NodeFacts,
        at: i64,
    },
    /// A stage node that never started (skipped, cancelled before start).
    NodeNotRun {
        node_run: NodeRunId,
        run: RunId,
        node: NodeFacts,
        status: NodeStatus,
        cause: String,
        at: i64,
    },
    /// A started node ended.
    NodeFinished {
        node_run: NodeRunId,
        status: NodeStatus,
        outputs_json: Option<String>,
        error: Option<String>,
        at: Option<i64>,
    },
    /// What a running build learned about its own result replaces its manifest.
    RunningManifestSet {
        run: RunId,
        node_id: NodeId,
        manifest_json: String,
    },
    /// A manifest no plan reads any more, cut down by `imgraph gc`.
    ManifestPruned {
        node_run: NodeRunId,
        manifest_json: String,
    },
    /// A built version, with its number decided by its builder.
    VersionCreated { version: ImageVersion },
    /// What is inside a version, read after its build.
    PackagesStored {
        image: String,
        version: String,
        inventory: Inventory,
        at: i64,
    },
    /// A version's release status changed (`Ready` after its tests, `Failed`, …).
    StatusSet {
        image: String,
        version: String,
        status: ReleaseStatus,
    },
    /// A version went to an environment.
    Delivered {
        delivery: i64,
        image: String,
        version: String,
        environment: String,
        run: RunId,
        at: i64,
    },
    /// `imgraph revoke`: the version and every version built from it are `Revoked`.
    Revoked {
        image: String,
        version: String,
        reason: String,
        at: i64,
    },
    /// `imgraph revoke --undo`: the version and those revoked through it get their
    /// status back.
    Unrevoked { image: String, version: String },
    /// `imgraph gc` removed the version's artifact (its number is never given again).
    VersionRemoved {
        image: String,
        version: String,
        at: i64,
    },
    /// `imgraph state push`: one table of a local history, its rows copied as they are
    /// (see `import.rs`).
    HistoryImported {
        table: HistoryTable,
        columns: Vec<String>,
        rows: Vec<Vec<serde_json::Value>>,
    },
}

/// What a node run was started with, owned (see [`super::NodeStart`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub node_id: NodeId,
    pub key: String,
    pub manifest_json: String,
    pub stanza: String,
    pub upstream_json: String,
    pub reasons_json: String,
    pub log_path: Option<String>,
}

impl From<&super::NodeStart<'_>> for NodeFacts {
    fn from(s: &super::NodeStart<'_>) -> Self {
        NodeFacts {
            node_id: s.node_id.clone(),
            key: s.key.to_owned(),
            manifest_json: s.manifest_json.to_owned(),
            stanza: s.stanza.to_owned(),
            upstream_json: s.upstream_json.to_owned(),
            reasons_json: s.reasons_json.to_owned(),
            log_path: s.log_path.map(str::to_owned),
        }
    }
}

/// One append's records as a journal stores them: `{"format": 1, "records": […]}`.
pub fn encode_batch(records: &[Record]) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Serialize)]
    struct Batch<'a> {
        format: u32,
        records: &'a [Record],
    }
    serde_json::to_vec(&Batch {
        format: RECORD_FORMAT,
        records,
    })
}

/// A batch that cannot be read: not JSON of records, or of a newer format.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("records of format {found} were written by a newer imgraph (this build reads {RECORD_FORMAT})")]
    NewerFormat { found: u32 },
    #[error("records do not parse")]
    Parse(#[from] serde_json::Error),
}

/// The records of one append, as [`encode_batch`] wrote them.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Record>, BatchError> {
    #[derive(Deserialize)]
    struct Head {
        format: u32,
    }
    #[derive(Deserialize)]
    struct Batch {
        records: Vec<Record>,
    }
    let head: Head = serde_json::from_slice(bytes)?;
    if head.format > RECORD_FORMAT {
        return Err(BatchError::NewerFormat { found: head.format });
    }
    Ok(serde_json::from_slice::<Batch>(bytes)?.records)
}

impl State {
    /// Applies one record to this file's history. The recording methods call it inside
    /// their transaction; [`State::sync`] calls it for records others appended. Its
    /// errors are those of the method that decided the record (a version recorded twice,
    /// a run that does not exist, …).
    pub fn apply_record(&self, record: &Record) -> Result<(), StateError> {
        match record {
            Record::RunStarted {
                run,
                command,
                options_json,
                at,
                pid,
                proc_start,
            } => self.insert_run(
                *run,
                command,
                options_json,
                *at,
                *pid,
                proc_start.as_deref(),
            ),
            Record::RunFinished { run, status, at } => self.update_run(*run, *status, *at),
            Record::RunAbandoned { run, pid, at } => self.mark_abandoned(*run, *pid, *at),
            Record::NodeStarted {
                node_run,
                run,
                node,
                at,
            } => self
                .insert_node(*node_run, *run, node, NodeStatus::Running, None, *at, None)
                .map_err(|e| self.sql_err(e, format!("record the start of node {}", node.node_id))),
            Record::NodeNotRun {
                node_run,
                run,
                node,
                status,
                cause,
                at,
            } => self
                .insert_node(*node_run, *run, node, *status, Some(cause), *at, Some(*at))
                .map_err(|e| {
                    self.sql_err(e, format!("record that node {} did not run", node.node_id))
                }),
            Record::NodeFinished {
                node_run,
                status,
                outputs_json,
                error,
                at,
            } => self.update_node(
                *node_run,
                *status,
                outputs_json.as_deref(),
                error.as_deref(),
                *at,
            ),
            Record::RunningManifestSet {
                run,
                node_id,
                manifest_json,
            } => self.update_running_manifest(*run, node_id, manifest_json),
            Record::ManifestPruned {
                node_run,
                manifest_json,
            } => self.update_manifest(*node_run, manifest_json),
            Record::VersionCreated { version } => self.insert_image(version),
            Record::PackagesStored {
                image,
                version,
                inventory,
                at,
            } => self.insert_packages(image, version, inventory, *at),
            Record::StatusSet {
                image,
                version,
                status,
            } => self.update_image_status(image, version, *status),
            Record::Delivered {
                delivery,
                image,
                version,
                environment,
                run,
                at,
            } => self.insert_delivery(*delivery, image, version, environment, *run, *at),
            Record::Revoked {
                image,
                version,
                reason,
                at,
            } => self.apply_revocation(image, version, reason, *at).map(drop),
            Record::Unrevoked { image, version } => self.undo_revocation(image, version),
            Record::VersionRemoved { image, version, at } => {
                self.update_removed(image, version, *at)
            }
            Record::HistoryImported {
                table,
                columns,
                rows,
            } => self.import_rows(*table, columns, rows),
        }
    }

    /// The next free id of `table` (its `INTEGER PRIMARY KEY`), for a record about to be
    /// written. Called inside the recording transaction, which holds the write lock.
    pub(super) fn next_id(&self, table: &str) -> Result<i64, StateError> {
        self.conn
            .query_row(
                &format!("SELECT coalesce(max(id), 0) + 1 FROM {table}"),
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.sql_err(e, format!("number the next row of {table}")))
    }
}
