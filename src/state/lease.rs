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
//! A taken lease is a [`LeaseGuard`]: it is given back when the guard is released or
//! dropped, so every way out of a command (an error, a panic, a poisoned state mutex)
//! gives it back. The guard uses a connection of its own, so releasing never waits for
//! the [`State`] that an apply shares between its tasks.

use std::path::PathBuf;

use rusqlite::{params, Connection, OptionalExtension};

use super::process::{is_alive, own_host, own_identity};
use super::{now_ms, Lease, LeaseOutcome, Liveness, State, StateError};

impl State {
    /// Takes the lease for `holder`, or reports who holds it. Taking it again with the
    /// same holder from the same process succeeds; a different holder, even in this
    /// process, gets `HeldBy`.
    pub fn acquire_lease(&self, holder: &str) -> Result<LeaseOutcome, StateError> {
        let context = "take the apply lease";
        let tx = self.write_tx(context)?;
        let current = self.read_lease(&tx, context)?;
        let own_pid = std::process::id();
        if let Some((lease, identity)) = current {
            let ours = lease.pid == own_pid
                && identity.as_deref() == own_identity()
                && lease.liveness == Liveness::Alive;
            if ours && lease.holder == holder {
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
            params![own_pid, own_identity(), holder, now_ms(), own_host()],
        )
        .map_err(|e| self.sql_err(e, context))?;
        tx.commit().map_err(|e| self.sql_err(e, context))?;
        Ok(LeaseOutcome::Acquired)
    }

    /// Gives the lease up if this process holds it; otherwise does nothing.
    pub fn release_lease(&self) -> Result<(), StateError> {
        delete_own_lease(&self.conn).map_err(|e| self.sql_err(e, "release the apply lease"))
    }

    /// The guard of a lease this process has just taken ([`State::acquire_lease`] said
    /// `Acquired`): it gives the lease back when released or dropped.
    pub fn lease_guard(&self) -> LeaseGuard {
        // An empty state held in memory (a plan without a state file) has no file to
        // give the lease back in: it goes with the connection.
        let on_disk = self.conn.path().is_some_and(|p| !p.is_empty());
        LeaseGuard {
            path: on_disk.then(|| self.path.clone()),
            released: false,
        }
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
            };
            (lease, identity)
        }))
    }
}

fn delete_own_lease(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM lease WHERE id = 1 AND pid = ?1 AND proc_start IS ?2",
        params![std::process::id(), own_identity()],
    )?;
    Ok(())
}

/// A lease this process holds; see the module doc.
#[must_use = "dropping the guard gives the lease back at once"]
#[derive(Debug)]
pub struct LeaseGuard {
    /// The state file; `None` for a state held in memory.
    path: Option<PathBuf>,
    released: bool,
}

impl LeaseGuard {
    /// Gives the lease back, saying so when that fails.
    pub fn release(mut self) -> Result<(), StateError> {
        self.released = true;
        self.delete()
    }

    fn delete(&self) -> Result<(), StateError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |source| StateError::Sqlite {
            path: path.clone(),
            context: "release the apply lease".into(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(super::BUSY_TIMEOUT).map_err(err)?;
        delete_own_lease(&conn).map_err(err)
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Err(e) = self.delete() {
            tracing::warn!(error = %crate::text::error_chain(&e), "the apply lease was not given back");
        }
    }
}
