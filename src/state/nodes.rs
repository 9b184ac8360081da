//! Node runs: what each stage node ran with (key, manifest, stanza, upstream keys,
//! reasons) and how it ended. `plan` reads them back as each node's history.

use std::collections::HashMap;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Params, Row};

use crate::graph::NodeId;

use super::record::{NodeFacts, Record};
use super::{now_ms, NodeRunId, NodeStatus, RunId, State, StateError};

/// What a node run was started with.
pub struct NodeStart<'a> {
    pub node_id: &'a NodeId,
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
    pub node_id: NodeId,
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

const NODE_COLS: &str = "id, run_id, node_id, key, manifest_json, stanza, upstream_json, \
     reasons_json, status, outputs_json, error, log_path, started_at, finished_at";

fn node_from_row(row: &Row<'_>) -> rusqlite::Result<NodeRecord> {
    Ok(NodeRecord {
        id: row.get(0)?,
        run_id: row.get(1)?,
        node_id: row.get(2)?,
        key: row.get(3)?,
        manifest_json: row.get(4)?,
        stanza: row.get(5)?,
        upstream_json: row.get(6)?,
        reasons_json: row.get(7)?,
        status: row.get(8)?,
        outputs_json: row.get(9)?,
        error: row.get(10)?,
        log_path: row.get(11)?,
        started_at: row.get(12)?,
        finished_at: row.get(13)?,
    })
}

/// Node ids are stored as their text; one read back is checked ([`NodeId::parse`]), so a
/// row changed outside imgraph is an error naming it, not a node no config has.
impl ToSql for NodeId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for NodeId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        NodeId::parse(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Selects the newest succeeded record of each node.
const LAST_SUCCESS: &str = "status = 'succeeded'";
/// Selects the newest record of each node that actually started.
const LAST_ATTEMPT: &str = "attempted = 1";

impl State {
    /// Records that a node started in `run`; its status is `Running` until
    /// [`State::finish_node`].
    pub fn start_node(&self, run: RunId, start: &NodeStart) -> Result<NodeRunId, StateError> {
        let ids = self.start_nodes(run, std::slice::from_ref(start))?;
        // One start, one id.
        Ok(ids[0])
    }

    /// Records that `starts` (nodes that became ready together) started in `run`, in one
    /// transaction: one write, and one journal append, for the group. Returns their node
    /// run ids, in order.
    pub fn start_nodes(
        &self,
        run: RunId,
        starts: &[NodeStart],
    ) -> Result<Vec<NodeRunId>, StateError> {
        let names: Vec<&str> = starts.iter().map(|s| s.node_id.as_str()).collect();
        let context = match names.as_slice() {
            [one] => format!("record the start of node {one}"),
            many => format!("record the start of nodes {}", many.join(", ")),
        };
        self.record(&context, || {
            let first = self.next_id("node_runs")?;
            let at = now_ms();
            let ids: Vec<NodeRunId> = (first..).take(starts.len()).collect();
            let records = starts
                .iter()
                .zip(&ids)
                .map(|(start, node_run)| Record::NodeStarted {
                    node_run: *node_run,
                    run,
                    node: NodeFacts::from(start),
                    at,
                })
                .collect();
            Ok((records, ids))
        })
    }

    pub fn finish_node(
        &self,
        id: NodeRunId,
        status: NodeStatus,
        outputs_json: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        self.finish_nodes(&[NodeEnd {
            id,
            status,
            outputs_json,
            error,
        }])
    }

    /// Records the ends of node runs whose work returned together, in one transaction:
    /// one write, and one journal append, for the group.
    pub fn finish_nodes(&self, ends: &[NodeEnd]) -> Result<(), StateError> {
        let ids: Vec<String> = ends.iter().map(|e| e.id.to_string()).collect();
        let context = match ids.as_slice() {
            [one] => format!("record the end of node run {one}"),
            many => format!("record the end of node runs {}", many.join(", ")),
        };
        let at = now_ms();
        let records = ends
            .iter()
            .map(|e| Record::NodeFinished {
                node_run: e.id,
                status: e.status,
                outputs_json: e.outputs_json.map(str::to_owned),
                error: e.error.map(str::to_owned),
                at: (e.status != NodeStatus::Running).then_some(at),
            })
            .collect();
        self.record(&context, || Ok((records, ())))
    }

    pub(super) fn update_node(
        &self,
        id: NodeRunId,
        status: NodeStatus,
        outputs_json: Option<&str>,
        error: Option<&str>,
        finished_at: Option<i64>,
    ) -> Result<(), StateError> {
        let changed = self
            .conn
            .execute(
                "UPDATE node_runs SET status = ?1, outputs_json = ?2, error = ?3, finished_at = ?4
                 WHERE id = ?5",
                params![status, outputs_json, error, finished_at, id],
            )
            .map_err(|e| self.sql_err(e, format!("record the end of node run {id}")))?;
        if changed == 0 {
            return Err(self.not_found(format!("node run {id}")));
        }
        Ok(())
    }

    /// Replaces the manifest recorded for `node_id` while it runs in `run` (what a build
    /// learned about its own result: see `provider::probes`).
    pub fn set_running_manifest(
        &self,
        run: RunId,
        node_id: &NodeId,
        manifest_json: &str,
    ) -> Result<(), StateError> {
        let record = Record::RunningManifestSet {
            run,
            node_id: node_id.clone(),
            manifest_json: manifest_json.to_owned(),
        };
        self.record(&format!("record the manifest of node {node_id}"), || {
            Ok((vec![record], ()))
        })
    }

    pub(super) fn update_running_manifest(
        &self,
        run: RunId,
        node_id: &NodeId,
        manifest_json: &str,
    ) -> Result<(), StateError> {
        let changed = self
            .conn
            .execute(
                "UPDATE node_runs SET manifest_json = ?1
                 WHERE run_id = ?2 AND node_id = ?3 AND status = 'running'",
                params![manifest_json, run, node_id],
            )
            .map_err(|e| self.sql_err(e, format!("record the manifest of node {node_id}")))?;
        if changed == 0 {
            return Err(self.not_found(format!("running node {node_id} of run {run}")));
        }
        Ok(())
    }

    /// A node that never started (skipped because of an upstream failure, or cancelled
    /// before start). `cause` is kept as its error. Such records never count as a node's
    /// `last_attempt`.
    pub fn record_not_run(
        &self,
        run: RunId,
        start: &NodeStart,
        status: NodeStatus,
        cause: &str,
    ) -> Result<NodeRunId, StateError> {
        let context = format!("record that node {} did not run", start.node_id);
        self.record(&context, || {
            let node_run = self.next_id("node_runs")?;
            let record = Record::NodeNotRun {
                node_run,
                run,
                node: NodeFacts::from(start),
                status,
                cause: cause.to_owned(),
                at: now_ms(),
            };
            Ok((vec![record], node_run))
        })
    }

    /// Inserts node run `id`; `attempted` is whether it started (see [`LAST_ATTEMPT`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_node(
        &self,
        id: NodeRunId,
        run: RunId,
        node: &NodeFacts,
        status: NodeStatus,
        error: Option<&str>,
        started_at: i64,
        finished_at: Option<i64>,
    ) -> rusqlite::Result<()> {
        let attempted = error.is_none();
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO node_runs (id, run_id, node_id, key, manifest_json, stanza, upstream_json,
                 reasons_json, status, attempted, error, log_path, started_at, finished_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        stmt.execute(params![
            id,
            run,
            node.node_id,
            node.key,
            node.manifest_json,
            node.stanza,
            node.upstream_json,
            node.reasons_json,
            status,
            attempted,
            error,
            node.log_path,
            started_at,
            finished_at,
        ])?;
        Ok(())
    }

    /// The record of `node_id` in `run` (the newest, were it recorded twice).
    pub fn node_in_run(
        &self,
        run: RunId,
        node_id: &NodeId,
    ) -> Result<Option<NodeRecord>, StateError> {
        self.query_nodes(
            "WHERE run_id = ?1 AND node_id = ?2 ORDER BY id DESC LIMIT 1",
            params![run, node_id],
            &format!("read node {node_id} of run {run}"),
        )
        .map(|mut v| v.pop())
    }

    /// The newest success of `node_id` whose outputs name `version` (a build's record of
    /// one version of its image).
    pub fn success_with_version(
        &self,
        node_id: &NodeId,
        version: &str,
    ) -> Result<Option<NodeRecord>, StateError> {
        self.query_nodes(
            "WHERE node_id = ?1 AND status = 'succeeded'
               AND json_valid(outputs_json) AND json_extract(outputs_json, '$.version') = ?2
             ORDER BY id DESC LIMIT 1",
            params![node_id, version],
            &format!("find the record of node {node_id} for version {version}"),
        )
        .map(|mut v| v.pop())
    }

    /// One node's last success and last attempt.
    pub fn history(&self, node_id: &NodeId) -> Result<NodeHistory, StateError> {
        let context = format!("read the history of node {node_id}");
        let tx = self.read_tx(&context)?;
        let newest = |filter: &str| {
            self.query_nodes(
                &format!("WHERE node_id = ?1 AND {filter} ORDER BY id DESC LIMIT 1"),
                [node_id],
                &context,
            )
            .map(|mut v| v.pop())
        };
        let history = NodeHistory {
            last_success: newest(LAST_SUCCESS)?,
            last_attempt: newest(LAST_ATTEMPT)?,
        };
        tx.commit().map_err(|e| self.sql_err(e, context))?;
        Ok(history)
    }

    /// Every node's history, read in one snapshot with one query. A node's last success
    /// is usually its last attempt too: that row is read once and given to both.
    pub fn snapshot(&self) -> Result<HashMap<NodeId, NodeHistory>, StateError> {
        let context = "read the history of every node";
        // Only each node's last success and last attempt are read, in id order: for each
        // node, the last of its rows that succeeded is its last success, and the last one
        // that was attempted its last attempt.
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {NODE_COLS}, attempted FROM node_runs WHERE id IN (
                     SELECT max(id) FROM node_runs WHERE {LAST_SUCCESS} GROUP BY node_id
                     UNION
                     SELECT max(id) FROM node_runs WHERE {LAST_ATTEMPT} GROUP BY node_id)
                 ORDER BY id"
            ))
            .map_err(|e| self.sql_err(e, context))?;
        let rows = stmt
            .query_map([], |row| Ok((node_from_row(row)?, row.get::<_, bool>(14)?)))
            .map_err(|e| self.sql_err(e, context))?;
        let mut out: HashMap<NodeId, NodeHistory> = HashMap::new();
        for row in rows {
            let (record, attempted) = row.map_err(|e| self.sql_err(e, context))?;
            let history = out.entry(record.node_id.clone()).or_default();
            let succeeded = record.status == NodeStatus::Succeeded;
            match (succeeded, attempted) {
                (true, true) => {
                    history.last_success = Some(record.clone());
                    history.last_attempt = Some(record);
                }
                (true, false) => history.last_success = Some(record),
                (false, _) => history.last_attempt = Some(record),
            }
        }
        Ok(out)
    }

    /// Node runs whose manifest no plan reads any more, oldest first: every record but
    /// each node's last success and last attempt (what `plan` and `why` compare with),
    /// whose manifest is longer than `min_len` bytes (pruned ones are short).
    pub fn superseded_manifests(&self, min_len: usize) -> Result<Vec<NodeRunId>, StateError> {
        let context = "find superseded manifests";
        let sql = format!(
            "SELECT id FROM node_runs
             WHERE length(manifest_json) > ?1
               AND id NOT IN (SELECT max(id) FROM node_runs WHERE {LAST_SUCCESS} GROUP BY node_id)
               AND id NOT IN (SELECT max(id) FROM node_runs WHERE {LAST_ATTEMPT} GROUP BY node_id)
             ORDER BY id"
        );
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(|e| self.sql_err(e, context))?;
        let rows = stmt
            .query_map([min_len as i64], |r| r.get(0))
            .map_err(|e| self.sql_err(e, context))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.sql_err(e, context))
    }

    /// The manifest JSON of one node run.
    pub fn manifest_of(&self, id: NodeRunId) -> Result<String, StateError> {
        self.conn
            .query_row(
                "SELECT manifest_json FROM node_runs WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => self.not_found(format!("node run {id}")),
                e => self.sql_err(e, format!("read the manifest of node run {id}")),
            })
    }

    /// Replaces the manifest of a node run no plan reads any more with a smaller one.
    pub fn replace_manifest(&self, id: NodeRunId, manifest_json: &str) -> Result<(), StateError> {
        let record = Record::ManifestPruned {
            node_run: id,
            manifest_json: manifest_json.to_owned(),
        };
        self.record(&format!("prune the manifest of node run {id}"), || {
            Ok((vec![record], ()))
        })
    }

    pub(super) fn update_manifest(
        &self,
        id: NodeRunId,
        manifest_json: &str,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE node_runs SET manifest_json = ?1 WHERE id = ?2",
                params![manifest_json, id],
            )
            .map_err(|e| self.sql_err(e, format!("prune the manifest of node run {id}")))?;
        Ok(())
    }

    /// `SELECT <node columns> FROM node_runs <tail>`.
    pub(super) fn query_nodes<P: Params>(
        &self,
        tail: &str,
        params: P,
        context: &str,
    ) -> Result<Vec<NodeRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {NODE_COLS} FROM node_runs {tail}"))
            .map_err(|e| self.sql_err(e, context))?;
        let rows = stmt
            .query_map(params, node_from_row)
            .map_err(|e| self.sql_err(e, context))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.sql_err(e, context))
    }
}
