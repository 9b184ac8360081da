//! `imgraph state push`: a local history copied whole into an empty shared journal.
//!
//! The history's rows are copied as they are, ids included, table by table (in the order
//! their foreign keys need), as [`Record::HistoryImported`] records in one batch: the
//! journal's first entry. Copying rows rather than re-deciding records keeps every column
//! exact (a row's `attempted` flag, a revocation's saved status, …), and a replay of the
//! journal gives the same rows as the file that was pushed. The batch is appended at
//! position 0 with the journal's conditional append, so a journal that already holds
//! anything is never written: the push is refused instead.

use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use super::journal::Journal;
use super::record::Record;
use super::{State, StateError};

/// The history tables, in the order a copy must fill them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HistoryTable {
    Runs,
    NodeRuns,
    Images,
    Deliveries,
    PackageLists,
    Packages,
}

impl HistoryTable {
    pub const ALL: [HistoryTable; 6] = [
        HistoryTable::Runs,
        HistoryTable::NodeRuns,
        HistoryTable::Images,
        HistoryTable::Deliveries,
        HistoryTable::PackageLists,
        HistoryTable::Packages,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HistoryTable::Runs => "runs",
            HistoryTable::NodeRuns => "node_runs",
            HistoryTable::Images => "images",
            HistoryTable::Deliveries => "deliveries",
            HistoryTable::PackageLists => "package_lists",
            HistoryTable::Packages => "packages",
        }
    }
}

/// What a push uploaded: rows per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub journal: String,
    pub rows: Vec<(&'static str, usize)>,
}

impl State {
    /// Uploads this file's history as the first entry of `journal`, which must be empty,
    /// and makes this file its mirror. Refused when the file has no history, already
    /// mirrors a journal, or the journal holds anything.
    pub fn push(&self, journal: &dyn Journal) -> Result<Pushed, StateError> {
        let name = journal.name();
        let context = format!("push the history of the state file to {name}");
        let refuse = |detail: String| StateError::JournalMismatch {
            path: self.path.clone(),
            context: context.clone(),
            detail,
        };
        let tx = self.write_tx(&context)?;
        let attached: Option<String> = rusqlite::OptionalExtension::optional(self.conn.query_row(
            "SELECT journal FROM journal_position WHERE id = 1",
            [],
            |row| row.get(0),
        ))
        .map_err(|e| self.sql_err(e, &*context))?;
        if let Some(attached) = attached {
            return Err(refuse(format!(
                "already mirrors {attached}: its history is there"
            )));
        }
        let mut records = Vec::new();
        let mut rows = Vec::new();
        for table in HistoryTable::ALL {
            let record = self.export_table(table, &context)?;
            if let Record::HistoryImported { rows: r, .. } = &record {
                rows.push((table.name(), r.len()));
            }
            records.push(record);
        }
        if rows.first().is_none_or(|(_, n)| *n == 0) {
            return Err(refuse("holds no runs: there is nothing to push".into()));
        }
        let seq = match journal.append(0, &records) {
            Ok(seq) => seq,
            Err(super::JournalError::Conflict { .. }) => {
                return Err(refuse(format!(
                    "cannot be pushed: {name} already holds history (use another prefix, or `imgraph state pull` to work from it)"
                )))
            }
            Err(source) => {
                return Err(StateError::Journal {
                    journal: name,
                    context,
                    source,
                })
            }
        };
        self.set_position(&name, seq, &context)?;
        tx.commit().map_err(|e| self.sql_err(e, &*context))?;
        Ok(Pushed {
            journal: name,
            rows,
        })
    }

    fn export_table(&self, table: HistoryTable, context: &str) -> Result<Record, StateError> {
        let columns = self.columns_of(table, context)?;
        // The table name is one of a closed set; columns come from the schema itself.
        let order = match table {
            // WITHOUT ROWID: its primary key orders it.
            HistoryTable::Packages => "",
            _ => " ORDER BY rowid",
        };
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT * FROM {}{order}", table.name()))
            .map_err(|e| self.sql_err(e, context))?;
        let width = columns.len();
        let rows = stmt
            .query_map([], |row| {
                (0..width)
                    .map(|i| row.get::<_, Value>(i).map(to_json))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| self.sql_err(e, context))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql_err(e, context))?;
        Ok(Record::HistoryImported {
            table,
            columns,
            rows,
        })
    }

    fn columns_of(&self, table: HistoryTable, context: &str) -> Result<Vec<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
            .map_err(|e| self.sql_err(e, context))?;
        let names = stmt
            .query_map([table.name()], |row| row.get::<_, String>(0))
            .map_err(|e| self.sql_err(e, context))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql_err(e, context))?;
        Ok(names)
    }

    /// Applies [`Record::HistoryImported`]: every column named must be one of the
    /// table's (a newer imgraph's extra column is refused, not dropped).
    pub(super) fn import_rows(
        &self,
        table: HistoryTable,
        columns: &[String],
        rows: &[Vec<serde_json::Value>],
    ) -> Result<(), StateError> {
        let context = format!("import the pushed rows of {}", table.name());
        let known = self.columns_of(table, &context)?;
        if let Some(unknown) = columns.iter().find(|c| !known.contains(c)) {
            return Err(StateError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "pushed rows of {} have a column `{unknown}` this imgraph does not know",
                    table.name()
                ),
            });
        }
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name(),
            columns
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", "),
            vec!["?"; columns.len()].join(", ")
        );
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(|e| self.sql_err(e, &*context))?;
        for row in rows {
            let values = row
                .iter()
                .map(from_json)
                .collect::<Option<Vec<Value>>>()
                .filter(|v| v.len() == columns.len())
                .ok_or_else(|| StateError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("a pushed row of {} does not fit its columns", table.name()),
                })?;
            stmt.execute(rusqlite::params_from_iter(values))
                .map_err(|e| self.sql_err(e, &*context))?;
        }
        Ok(())
    }
}

fn to_json(value: Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => i.into(),
        Value::Real(f) => f.into(),
        Value::Text(t) => t.into(),
        // No history column holds bytes; kept as text should one ever.
        Value::Blob(b) => String::from_utf8_lossy(&b).into_owned().into(),
    }
}

fn from_json(value: &serde_json::Value) -> Option<Value> {
    Some(match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64()?),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        _ => return None,
    })
}
