//! The ledger of temporary resources. A row is written before the resource is created
//! (with a placeholder `resource` when the id is only known afterwards, then updated), so
//! a run killed between "create" and "record" still leaves a trace for the next run or
//! `imgraph gc` to clean up.

use rusqlite::{params, Row};

use super::{now_ms, Durable, RunId, State, StateError};

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

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<LedgerEntry> {
    Ok(LedgerEntry {
        id: row.get(0)?,
        run_id: row.get(1)?,
        node_id: row.get(2)?,
        provider: row.get(3)?,
        kind: row.get(4)?,
        resource: row.get(5)?,
        purpose: row.get(6)?,
        created_at: row.get(7)?,
        destroyed_at: row.get(8)?,
    })
}

impl State {
    /// Adds a ledger row; [`Durable::sync`] it before the resource is created.
    pub fn ledger_add(
        &self,
        run: Option<RunId>,
        node_id: &str,
        provider: &str,
        kind: &str,
        resource: &str,
        purpose: &str,
    ) -> Result<Durable<i64>, StateError> {
        self.conn
            .execute(
                "INSERT INTO ledger (run_id, node_id, provider, kind, resource, purpose, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![run, node_id, provider, kind, resource, purpose, now_ms()],
            )
            .map_err(|e| {
                self.sql_err(e, format!("record {kind} {resource} of node {node_id} in the ledger"))
            })?;
        Ok(self.unsynced(self.conn.last_insert_rowid()))
    }

    /// Replaces the resource of a ledger entry (e.g. with the instance id once known);
    /// [`Durable::sync`] it before going on.
    pub fn ledger_set_resource(&self, id: i64, resource: &str) -> Result<Durable<()>, StateError> {
        let changed = self
            .conn
            .execute(
                "UPDATE ledger SET resource = ?1 WHERE id = ?2",
                params![resource, id],
            )
            .map_err(|e| {
                self.sql_err(
                    e,
                    format!("record resource {resource} in ledger entry {id}"),
                )
            })?;
        if changed == 0 {
            return Err(self.not_found(format!("ledger entry {id}")));
        }
        Ok(self.unsynced(()))
    }

    /// Marks an entry destroyed; marking it again keeps the first time.
    pub fn ledger_mark_destroyed(&self, id: i64) -> Result<(), StateError> {
        let changed = self
            .conn
            .execute(
                "UPDATE ledger SET destroyed_at = coalesce(destroyed_at, ?1) WHERE id = ?2",
                params![now_ms(), id],
            )
            .map_err(|e| self.sql_err(e, format!("mark ledger entry {id} destroyed")))?;
        if changed == 0 {
            return Err(self.not_found(format!("ledger entry {id}")));
        }
        Ok(())
    }

    /// Entries not yet destroyed, oldest first.
    pub fn ledger_open(&self) -> Result<Vec<LedgerEntry>, StateError> {
        let context = "list open ledger entries";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, run_id, node_id, provider, kind, resource, purpose, created_at,
                        destroyed_at
                 FROM ledger WHERE destroyed_at IS NULL ORDER BY id",
            )
            .map_err(|e| self.sql_err(e, context))?;
        let rows = stmt
            .query_map([], entry_from_row)
            .map_err(|e| self.sql_err(e, context))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.sql_err(e, context))
    }
}
