//! The journal: where the history's [`Record`]s are shared between machines.
//!
//! Without a journal (the default) a state file is the whole truth and a record is only
//! applied to it: exactly the writes imgraph always made, nothing more. With one
//! ([`State::with_journal`]), every recording method decides its records, applies them
//! inside its local transaction (which checks them), appends them to the journal, and
//! only then commits; [`State::sync`] applies what others appended. The local file keeps
//! the position it has applied up to (table `journal_position`, schema 7), so it stays
//! the query engine and cache, and can be thrown away and rebuilt from the journal.
//!
//! An append is conditional: it names the position it was decided at and fails with
//! [`JournalError::Conflict`] when someone appended after it, so two writers can never
//! both build on the same history (on object storage: a create with `If-None-Match: *`
//! of the next position's object). A conflicting writer's local transaction is rolled
//! back; it syncs and decides again. A runner killed mid-apply loses only the records it
//! had not appended.

use std::sync::Arc;

use super::record::Record;
use super::{State, StateError};

/// A position in a journal: the number of appends it holds. `0` is the empty journal.
pub type Seq = u64;

/// Why a journal could not append or read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Someone appended after `after`: the caller's history is behind.
    #[error(
        "append after position {after}: the journal is at {current}, another writer appended first"
    )]
    Conflict { after: Seq, current: Seq },
    /// This runner may not append any more: its lease was lost, or not renewed for too
    /// long (another runner may hold it now).
    #[error("append to the journal: {reason}; nothing more is recorded by this runner")]
    Fenced { reason: String },
    /// The store failed (network, permissions, a damaged object); the backend's error is
    /// the source.
    #[error("{context}")]
    Store {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A shared, append-only sequence of record batches.
///
/// Contract for implementations:
/// - `append(after, records)` stores `records` as the one batch at position `after + 1`
///   if and only if the journal is at `after`, atomically (on object storage, a create
///   with `If-None-Match: *`); otherwise it fails with [`JournalError::Conflict`] and
///   stores nothing. It returns the new position. An append whose answer was lost must be
///   resolved by reading back (is the batch at `after + 1` ours?), never by appending
///   twice.
/// - `read_since(seq)` returns every record of the batches after `seq`, in order, each
///   with its batch's position.
/// - Both are blocking; an implementation on an async client runs it on its own runtime
///   or with `tokio::task::block_in_place` (imgraph's runtime is multi-threaded).
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// Names the journal in messages and in the state file (e.g. `s3://bucket/prefix/`).
    fn name(&self) -> String;

    fn append(&self, after: Seq, records: &[Record]) -> Result<Seq, JournalError>;

    fn read_since(&self, seq: Seq) -> Result<Vec<(Seq, Record)>, JournalError>;
}

/// The journal a state is attached to, with the position its file has applied.
pub(super) struct Attached {
    journal: Arc<dyn Journal>,
    seen: std::cell::Cell<Seq>,
}

impl State {
    /// Attaches `journal`: from now on the history's records go through it. The state
    /// file must be empty of history or have been filled from this same journal (one
    /// with local history is pushed first, not silently mixed in).
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Result<State, StateError> {
        let name = journal.name();
        let context = format!("attach the state file to journal {name}");
        let row: Option<(String, i64)> =
            rusqlite::OptionalExtension::optional(self.conn.query_row(
                "SELECT journal, seq FROM journal_position WHERE id = 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            ))
            .map_err(|e| self.sql_err(e, &*context))?;
        let seen = match row {
            Some((attached, seq)) if attached == name => {
                u64::try_from(seq).map_err(|_| StateError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("journal position {seq} is out of range"),
                })?
            }
            Some((attached, _)) => {
                return Err(self.journal_err(
                    &context,
                    format!(
                        "mirrors another journal, {attached}: it is only its cache, move it away"
                    ),
                ))
            }
            None => {
                let runs: i64 = self
                    .conn
                    .query_row("SELECT count(*) FROM runs", [], |row| row.get(0))
                    .map_err(|e| self.sql_err(e, &*context))?;
                if runs > 0 {
                    return Err(self.journal_err(
                        &context,
                        "holds history that is not in the journal: upload it with `imgraph state push` first, or move the file away".into(),
                    ));
                }
                0
            }
        };
        self.journal = Some(Attached {
            journal,
            seen: std::cell::Cell::new(seen),
        });
        Ok(self)
    }

    /// The journal position this file has applied up to (`None` without a journal).
    pub fn journal_position(&self) -> Option<Seq> {
        self.journal.as_ref().map(|a| a.seen.get())
    }

    /// Applies the records others appended to the journal since this file last saw it,
    /// in one transaction. Returns how many were applied; without a journal, does
    /// nothing and touches nothing.
    pub fn sync(&self) -> Result<usize, StateError> {
        let Some(attached) = &self.journal else {
            return Ok(0);
        };
        let name = attached.journal.name();
        let context = format!("apply the records of journal {name}");
        let new = attached
            .journal
            .read_since(attached.seen.get())
            .map_err(|source| StateError::Journal {
                journal: name.clone(),
                context: context.clone(),
                source,
            })?;
        let Some(last) = new.last().map(|(seq, _)| *seq) else {
            return Ok(0);
        };
        let tx = self.write_tx(&context)?;
        for (_, record) in &new {
            self.apply_record(record)?;
        }
        self.set_position(&name, last, &context)?;
        tx.commit().map_err(|e| self.sql_err(e, &*context))?;
        attached.seen.set(last);
        Ok(new.len())
    }

    /// The one writer of the history: in one transaction, `decide` computes the records
    /// (and what the caller returns), they are applied, appended to the journal when one
    /// is attached, and committed. Nothing is committed when the append fails.
    pub(super) fn record<T>(
        &self,
        context: &str,
        decide: impl FnOnce() -> Result<(Vec<Record>, T), StateError>,
    ) -> Result<T, StateError> {
        let tx = self.write_tx(context)?;
        let (records, out) = decide()?;
        for record in &records {
            self.apply_record(record)?;
        }
        let appended = match &self.journal {
            Some(attached) if !records.is_empty() => {
                let name = attached.journal.name();
                let seq = attached
                    .journal
                    .append(attached.seen.get(), &records)
                    .map_err(|source| StateError::Journal {
                        journal: name.clone(),
                        context: context.to_owned(),
                        source,
                    })?;
                self.set_position(&name, seq, context)?;
                Some((attached, seq))
            }
            _ => None,
        };
        tx.commit().map_err(|e| self.sql_err(e, context))?;
        if let Some((attached, seq)) = appended {
            attached.seen.set(seq);
        }
        Ok(out)
    }

    pub(super) fn set_position(
        &self,
        journal: &str,
        seq: Seq,
        context: &str,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO journal_position (id, journal, seq) VALUES (1, ?1, ?2)",
                rusqlite::params![journal, i64::try_from(seq).unwrap_or(i64::MAX)],
            )
            .map_err(|e| self.sql_err(e, context))?;
        Ok(())
    }

    fn journal_err(&self, context: &str, detail: String) -> StateError {
        StateError::JournalMismatch {
            path: self.path.clone(),
            context: context.to_owned(),
            detail,
        }
    }
}
