//! Runs: one row per invocation that records work, with the pid that owns it.

use rusqlite::{params, OptionalExtension, Row};

use super::process::{is_alive, own_identity};
use super::record::Record;
use super::{now_ms, NodeRecord, RunId, RunStatus, State, StateError};

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

const RUN_COLS: &str = "id, command, options_json, status, started_at, finished_at, pid";

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: row.get(0)?,
        command: row.get(1)?,
        options_json: row.get(2)?,
        status: row.get(3)?,
        started_at: row.get(4)?,
        finished_at: row.get(5)?,
        pid: row.get(6)?,
    })
}

impl State {
    /// Records a new run, `Running`, owned by this process.
    pub fn begin_run(&self, command: &str, options_json: &str) -> Result<RunId, StateError> {
        let context = format!("record the start of `{command}`");
        self.record(&context, || {
            let run = self.next_id("runs")?;
            let record = Record::RunStarted {
                run,
                command: command.to_owned(),
                options_json: options_json.to_owned(),
                at: now_ms(),
                pid: std::process::id(),
                proc_start: own_identity().map(str::to_owned),
            };
            Ok((vec![record], run))
        })
    }

    pub fn finish_run(&self, run: RunId, status: RunStatus) -> Result<(), StateError> {
        let at = (status != RunStatus::Running).then(now_ms);
        self.record(&format!("record the end of run {run}"), || {
            Ok((vec![Record::RunFinished { run, status, at }], ()))
        })
    }

    pub(super) fn insert_run(
        &self,
        run: RunId,
        command: &str,
        options_json: &str,
        at: i64,
        pid: u32,
        proc_start: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO runs (id, command, options_json, status, started_at, pid, proc_start)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    run,
                    command,
                    options_json,
                    RunStatus::Running,
                    at,
                    pid,
                    proc_start
                ],
            )
            .map_err(|e| self.sql_err(e, format!("record the start of `{command}`")))?;
        Ok(())
    }

    pub(super) fn update_run(
        &self,
        run: RunId,
        status: RunStatus,
        finished_at: Option<i64>,
    ) -> Result<(), StateError> {
        let changed = self
            .conn
            .execute(
                "UPDATE runs SET status = ?1, finished_at = ?2 WHERE id = ?3",
                params![status, finished_at, run],
            )
            .map_err(|e| self.sql_err(e, format!("record the end of run {run}")))?;
        if changed == 0 {
            return Err(self.not_found(format!("run {run}")));
        }
        Ok(())
    }

    /// The newest `limit` runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let context = "list runs";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM runs ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(|e| self.sql_err(e, context))?;
        let rows = stmt
            .query_map([limit], run_from_row)
            .map_err(|e| self.sql_err(e, context))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.sql_err(e, context))
    }

    /// One run, if it exists.
    pub fn run(&self, run: RunId) -> Result<Option<RunRecord>, StateError> {
        self.conn
            .query_row(
                &format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"),
                [run],
                run_from_row,
            )
            .optional()
            .map_err(|e| self.sql_err(e, format!("read run {run}")))
    }

    /// The node records of one run, in the order they were started or recorded.
    pub fn node_runs(&self, run: RunId) -> Result<Vec<NodeRecord>, StateError> {
        self.query_nodes(
            "WHERE run_id = ?1 ORDER BY id",
            [run],
            &format!("list the nodes of run {run}"),
        )
    }

    /// Marks runs still `Running` whose process is gone (see [`super::process`]) as
    /// `Abandoned`, with their running node runs. `except` (the caller's own run) is
    /// never touched. Returns the run ids marked.
    pub fn abandon_stale_runs(&self, except: Option<RunId>) -> Result<Vec<RunId>, StateError> {
        self.abandon_runs(except, false)
    }

    /// Like [`State::abandon_stale_runs`], but marks every `Running` run except `except`
    /// whether or not its process looks alive. For a caller that holds the lease, which
    /// proves no other apply is running.
    pub fn abandon_running_runs(&self, except: Option<RunId>) -> Result<Vec<RunId>, StateError> {
        self.abandon_runs(except, true)
    }

    fn abandon_runs(&self, except: Option<RunId>, force: bool) -> Result<Vec<RunId>, StateError> {
        let context = "mark stale runs abandoned";
        self.record(context, || {
            let running: Vec<(RunId, u32, Option<String>)> = {
                let mut stmt = self
                    .conn
                    .prepare(
                        "SELECT id, pid, proc_start FROM runs WHERE status = 'running' ORDER BY id",
                    )
                    .map_err(|e| self.sql_err(e, context))?;
                let rows = stmt
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                    .map_err(|e| self.sql_err(e, context))?;
                rows.collect::<Result<_, _>>()
                    .map_err(|e| self.sql_err(e, context))?
            };
            let at = now_ms();
            let stale: Vec<(RunId, u32)> = running
                .into_iter()
                .filter(|(id, pid, identity)| {
                    Some(*id) != except && (force || !is_alive(*pid, identity.as_deref()))
                })
                .map(|(id, pid, _)| (id, pid))
                .collect();
            let records = stale
                .iter()
                .map(|&(run, pid)| Record::RunAbandoned { run, pid, at })
                .collect();
            Ok((records, stale.into_iter().map(|(id, _)| id).collect()))
        })
    }

    /// A run whose process is gone, and its running node runs, become `Abandoned`.
    pub(super) fn mark_abandoned(&self, run: RunId, pid: u32, at: i64) -> Result<(), StateError> {
        let context = "mark stale runs abandoned";
        self.conn
            .execute(
                "UPDATE runs SET status = 'abandoned', finished_at = ?1 WHERE id = ?2",
                params![at, run],
            )
            .map_err(|e| self.sql_err(e, context))?;
        self.conn
            .execute(
                "UPDATE node_runs SET status = 'abandoned', finished_at = ?1,
                        error = coalesce(error, ?2)
                 WHERE run_id = ?3 AND status = 'running'",
                params![
                    at,
                    format!("run {run} (pid {pid}) ended without finishing"),
                    run
                ],
            )
            .map_err(|e| self.sql_err(e, context))?;
        Ok(())
    }
}
