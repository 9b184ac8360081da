//! The apply lease (invariant 5: two applies on one state never interleave).
//!
//! A single row names the holder's pid, process identity, host and a free-form holder
//! label (`imgraph apply`). It is taken in a `BEGIN IMMEDIATE` transaction, so two
//! processes racing for it are serialised by SQLite's write lock. A lease whose process
//! is gone from this host (crash, kill -9) is taken over; one held on another host (a
//! state file on a shared folder) is never judged dead from here. There is no expiry
//! time, because a long apply must not lose its lease; `imgraph lock break` removes a
//! lease by hand.
//!
//! These are the SQLite lease's own operations; commands use it through
//! [`super::LeaseStore`] ([`super::SqliteLease`]), which also gives the [`super::LeaseGuard`].

use rusqlite::{params, OptionalExtension};

use super::lease_store::LeaseHolder;
use super::process::{is_alive, own_host};
use super::{now_ms, Lease, LeaseOutcome, Liveness, State, StateError};

impl State {
    /// Takes the lease for `holder` in this process, or reports who holds it (see
    /// [`State::acquire_lease_as`]).
    pub fn acquire_lease(&self, holder: &str) -> Result<LeaseOutcome, StateError> {
        self.acquire_lease_as(&LeaseHolder::this_process(holder))
    }

    /// Takes the lease for `holder`, or reports who holds it. Taking it again as the same
    /// holder (command, pid and identity) succeeds; a different command, even in the same
    /// process, gets `HeldBy`.
    pub fn acquire_lease_as(&self, holder: &LeaseHolder) -> Result<LeaseOutcome, StateError> {
        let context = "take the apply lease";
        let tx = self.write_tx(context)?;
        let current = self.read_lease(&tx, context)?;
        if let Some((lease, identity)) = current {
            let ours = lease.pid == holder.pid
                && identity == holder.identity
                && lease.liveness == Liveness::Alive;
            if ours && lease.holder == holder.command {
                return Ok(LeaseOutcome::Acquired);
            }
            if lease.liveness != Liveness::Gone {
                return Ok(LeaseOutcome::HeldBy {
                    pid: lease.pid,
                    host: lease.host,
                    holder: lease.holder,
                    since: lease.since,
                });
            }
            tracing::warn!(pid = lease.pid, holder = %lease.holder, "taking over the apply lease of a process that is gone");
        }
        tx.execute(
            "INSERT OR REPLACE INTO lease (id, pid, proc_start, holder, since, host)
             VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![
                holder.pid,
                holder.identity,
                holder.command,
                now_ms(),
                holder.host
            ],
        )
        .map_err(|e| self.sql_err(e, context))?;
        tx.commit().map_err(|e| self.sql_err(e, context))?;
        Ok(LeaseOutcome::Acquired)
    }

    /// Gives the lease up if this process holds it; otherwise does nothing.
    pub fn release_lease(&self) -> Result<(), StateError> {
        self.release_lease_of(&LeaseHolder::this_process(""))
    }

    /// Gives the lease up if `holder`'s process holds it; otherwise does nothing.
    pub fn release_lease_of(&self, holder: &LeaseHolder) -> Result<(), StateError> {
        self.conn
            .execute(
                "DELETE FROM lease WHERE id = 1 AND pid = ?1 AND proc_start IS ?2",
                params![holder.pid, holder.identity],
            )
            .map_err(|e| self.sql_err(e, "release the apply lease"))?;
        Ok(())
    }

    /// The lease as it stands, if anyone holds it.
    pub fn lease(&self) -> Result<Option<Lease>, StateError> {
        Ok(self
            .read_lease(&self.conn, "read the apply lease")?
            .map(|(lease, _)| lease))
    }

    /// Removes the lease whoever holds it (`imgraph lock break`; the caller decides
    /// whether that is safe). Returns whether there was one.
    pub fn break_lease(&self) -> Result<bool, StateError> {
        let removed = self
            .conn
            .execute("DELETE FROM lease WHERE id = 1", [])
            .map_err(|e| self.sql_err(e, "break the apply lease"))?;
        Ok(removed > 0)
    }

    fn read_lease(
        &self,
        conn: &rusqlite::Connection,
        context: &str,
    ) -> Result<Option<(Lease, Option<String>)>, StateError> {
        type Row = (u32, Option<String>, String, i64, Option<String>);
        let row: Option<Row> = conn
            .query_row(
                "SELECT pid, proc_start, holder, since, host FROM lease WHERE id = 1",
                [],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.sql_err(e, context))?;
        Ok(row.map(|(pid, identity, holder, since, host)| {
            let here = match (host.as_deref(), own_host()) {
                (Some(theirs), Some(ours)) => theirs == ours,
                // Leases from before hosts were kept, or a host name that cannot be read.
                _ => true,
            };
            let liveness = if !here {
                Liveness::OtherHost
            } else if is_alive(pid, identity.as_deref()) {
                Liveness::Alive
            } else {
                Liveness::Gone
            };
            let lease = Lease {
                pid,
                host,
                holder,
                since,
                liveness,
                command: None,
                heartbeat: None,
            };
            (lease, identity)
        }))
    }
}
